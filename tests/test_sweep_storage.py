"""Where a study's files live: the storage probe on a two-node Ray cluster whose nodes do not
share the workdir, the ledger kept locally for a workdir on a network filesystem, and
`kdjax run` refusing to run as several processes of one job."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sweep_helpers as fake
from sweep_helpers import manifest

from kdjax.distributed import multi_process_launch
from kdjax.sweep import Ledger, LocalExecutor, run_study, storage
from kdjax.sweep.cli import main as sweep_main

ROOT = Path(__file__).resolve().parent.parent
TESTS = str(Path(__file__).resolve().parent)
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    # Token authentication on for the nodes and the driver alike (~/.ray/auth_token).
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started (ray start --block and its children)."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "-m", "--propagation", "private", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (mount namespaces)")
def test_storage_probe_fails_when_a_node_has_its_own_workdir(tmp_path):
    """Two Ray nodes on 127.0.0.1; the second runs in a mount namespace where the workdir is
    another, empty folder (as on a worker with its own local disk)."""
    work, elsewhere = tmp_path / "w", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    port = _free_port()
    # Ray's session folders hold Unix sockets, whose paths must stay short: not under tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
    node = ["--num-cpus=1", '--resources={"TPU": 4}', "--block", "--disable-usage-stats"]
    head = _start(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", f"--temp-dir={temp / 'h'}", *node],
        tmp_path / "head.log",
    )  # fmt: skip
    worker = None
    try:
        join = " ".join(
            [RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
             f"--temp-dir={temp / 'w'}", *(f"'{a}'" for a in node)]
        )  # fmt: skip
        script = f"mount --bind {elsewhere} {work} && exec {join}"
        worker = _start(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            tmp_path / "worker.log",
        )
        # The driver in its own process: Ray reads RAY_AUTH_MODE when it is first imported.
        path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": path}
        args = [f"127.0.0.1:{port}", str(manifest(tmp_path)), str(work)]
        out = subprocess.run([sys.executable, "-c", DRIVER, *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=180)  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)
    msg = out.stdout.strip().splitlines()[-1]
    assert msg.startswith("storage: 1 of 2 Ray node(s) do not see the workdir " + str(work))
    assert "FileNotFoundError" in msg and "NFS share" in msg and "gcsfuse" in msg
    assert not list(work.glob(".kdjax-probe-*"))  # the sentinel is cleaned up
    with Ledger(work / "ledger.sqlite") as ledger:
        assert ledger.rows(status="done") == []  # nothing ran


DRIVER = """
import sys, time
import ray
import sweep_helpers as fake
from kdjax.sweep import run_study
from kdjax.sweep.ray_exec import RayExecutor

address, manifest, work = sys.argv[1:]
ray.init(address=address, log_to_driver=False)
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert time.monotonic() < deadline, "the second node did not join"
    time.sleep(0.5)
try:
    run_study(manifest, work, RayExecutor(resources={"TPU": 1}, run_fn=fake.timed), progress=False)
except RuntimeError as e:
    print(e)
"""


def test_fs_type_reads_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    (tmp_path / "nfs").mkdir()
    (tmp_path / "gcs").mkdir()
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        f"10.0.0.2:/kdjax {tmp_path / 'nfs'} nfs4 rw 0 0\n"
        f"bucket {tmp_path / 'gcs'} fuse.gcsfuse rw 0 0\n"
    )
    assert storage.fs_type(tmp_path / "nfs" / "paper" / "x", mounts) == "nfs4"
    assert storage.fs_type(tmp_path / "gcs", mounts) == "fuse.gcsfuse"
    assert storage.fs_type(tmp_path / "nfsother", mounts) == "ext4"
    assert storage.absolute("gs://b/study/") == "gs://b/study"
    with pytest.raises(ValueError, match="mount the bucket with gcsfuse"):
        storage.check_workdir("gs://b/study")


def test_object_storage_paths_are_refused_not_made_local_folders(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from kdjax.config import RunConfig
    from kdjax.sweep import Planner, load_manifest

    monkeypatch.chdir(tmp_path)
    run = next(iter(Planner(load_manifest(manifest(tmp_path)), tmp_path / "w").teachers.values()))
    for field in ("output_dir", "cache_dir"):
        bad = {**run.config.model_dump(mode="json"), field: "gs://bucket/x"}
        with pytest.raises(ValidationError, match="object storage is not supported here yet"):
            RunConfig.model_validate(bad)
    with pytest.raises(ValueError, match="mount the bucket with gcsfuse"):
        run_study(manifest(tmp_path), "gs://bucket/study", LocalExecutor(fake.planted))
    assert not (tmp_path / "gs:").exists()


def test_network_workdir_keeps_the_ledger_local_and_publishes_it(tmp_path, monkeypatch, capsys):
    work = tmp_path / "shared" / "w"
    monkeypatch.setenv("KDJAX_LEDGER_DIR", str(tmp_path / "local"))
    monkeypatch.setattr(storage, "fs_type", lambda path, mounts="": "nfs4")
    path = manifest(tmp_path)
    fake.CALLS.clear()
    out = run_study(path, work, LocalExecutor(fake.planted), progress=False)
    assert "is on a network filesystem (nfs4): the ledger is kept at" in capsys.readouterr().out
    local = storage.local_ledger_dir(work) / "ledger.sqlite"
    assert local.is_file() and local.parent.parent == tmp_path / "local"
    from kdjax.sweep.driver import _driver_lock

    with _driver_lock(work):  # a driver on another machine holds the shared workdir's lock
        with pytest.raises(RuntimeError, match=r"another driver \(pid \d+\) is running"):
            run_study(path, work, LocalExecutor(fake.planted), progress=False)
    with Ledger(work / "ledger.sqlite") as snap:  # the published snapshot: complete
        assert len(snap.rows(status="done")) == out["done"] == len(fake.CALLS)
    assert sweep_main(["status", str(work)]) == 0
    # The driver's machine was lost: a new driver restores the ledger from the snapshot and
    # runs nothing again.
    shutil.rmtree(tmp_path / "local")
    fake.CALLS.clear()
    run_study(path, work, LocalExecutor(fake.planted), progress=False)
    assert "ledger restored from the snapshot" in capsys.readouterr().out
    assert fake.CALLS == [] and local.is_file()


@pytest.mark.parametrize(
    "env, why",
    [
        ({}, None),
        ({"KDJAX_DISTRIBUTED": "1"}, "KDJAX_DISTRIBUTED=1"),
        ({"SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS": "16"}, "SLURM_STEP_NUM_TASKS=16"),
        ({"SLURM_NTASKS": "2"}, None),  # the batch step of a 2-node Ray job: one process
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_SIZE=4"),
        ({"KDJAX_NUM_PROCESSES": "2"}, "KDJAX_NUM_PROCESSES=2"),
        ({"WORLD_SIZE": "1"}, None),
    ],
)
def test_multi_process_launches_are_detected(env, why):
    assert multi_process_launch(False, env) == why
    assert multi_process_launch(True, {}) == "--distributed was given"


def test_kdjax_run_refuses_two_jax_distributed_processes(tmp_path):
    """Both processes of a two-process jax.distributed job refuse before joining it."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "KDJAX_DISTRIBUTED": "1", "KDJAX_COORDINATOR": f"127.0.0.1:{port}",
               "KDJAX_NUM_PROCESSES": "2", "KDJAX_PROCESS_ID": str(pid)}  # fmt: skip
        cmd = [sys.executable, "-m", "kdjax.cli", "run", str(manifest(tmp_path)), "--workdir",
               str(tmp_path / "w")]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert "kdjax run drives a whole study from ONE process" in err
        assert "tpu/ray-start.sh" in err and "gpu/ray-slurm.sbatch" in err
    assert not (tmp_path / "w").exists()
