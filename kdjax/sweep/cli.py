"""`kdjax plan | run | status | simulate`: study sweeps from the command line.

Also runnable alone: `python -m kdjax.sweep.cli run experiments/smoke.yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_plan(args: argparse.Namespace) -> None:
    from kdjax.sweep.driver import default_workdir
    from kdjax.sweep.estimate import describe_plan
    from kdjax.sweep.manifest import load_manifest
    from kdjax.sweep.projection import parse_sizes

    examples = parse_sizes(args.examples)
    if args.chips < 1:
        raise ValueError(f"--chips: must be >= 1, got {args.chips}")
    m = load_manifest(args.manifest)
    workdir = args.workdir or default_workdir(m)
    print(describe_plan(m, workdir, args.hardware, args.chips, examples))


def parse_resources(text: str | None) -> dict[str, float] | None:
    """`--resources '{"GPU": 0.5}'`: a JSON mapping, checked like executor.resources."""
    if text is None:
        return None
    from kdjax.config import ConfigError
    from kdjax.sweep.ray_exec import split_request

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--resources: not JSON ({e}); e.g. '{{\"TPU\": 1}}'") from None
    return split_request(value, "--resources")


def cmd_run(args: argparse.Namespace) -> None:
    from kdjax.distributed import refuse_study_under_distributed
    from kdjax.sweep.driver import run_study

    refuse_study_under_distributed(getattr(args, "distributed", False))
    resources = parse_resources(args.resources)
    run_study(
        args.manifest,
        workdir=args.workdir,
        executor=args.executor,
        address=args.address,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        group_size=args.group_size,
        resources=resources,
    )


def cmd_status(args: argparse.Namespace) -> None:
    from kdjax.sweep.ledger import Ledger
    from kdjax.sweep.summary import status_text

    path = Path(args.workdir) / "ledger.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}; run `kdjax run MANIFEST` first")
    with Ledger(path) as ledger:
        print(status_text(ledger))
        if args.csv:
            print(f"\nwrote {ledger.export_csv(args.csv)}")


def cmd_simulate(args: argparse.Namespace) -> None:
    import pandas as pd

    from kdjax.sweep.simulate import Noise, noise_from_ledger, read_effects, simulate

    effects = read_effects(args.effects)
    base = noise_from_ledger(args.workdir) if args.workdir else None
    noise = Noise.parse(args.noise, base)
    source = f"measured in {args.workdir}" if args.workdir else "stated"
    print(f"noise ({source}, --noise overrides): {noise}")
    out = simulate(args.manifest, effects, noise, args.repeats, args.n_boot, keep=args.keep)
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(out.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(
        f"\n{args.repeats} simulated studies. truth: the planted effect vs the axis's best "
        "option, points; estimate, bias: the mean reported effect and its error; detected: "
        "share with Holm-adjusted p < 0.05 (for a truth of 0: false alarms); coverage: share "
        "of intervals holding the truth; chosen_best: share of studies whose best option "
        "(on validation) it was."
    )


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "status": cmd_status, "simulate": cmd_simulate}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `plan`, `run` and `status` on a `kdjax` sub-command parser."""
    p = subparsers.add_parser("plan", help="show what a study manifest will run and its cost")
    p.add_argument("manifest", help="study manifest (YAML)")
    p.add_argument("--workdir", help="where a previous sweep's ledger is (for timings)")
    p.add_argument(
        "--hardware",
        metavar="RESULTS.json",
        help="project chip-hours from a benchmarks/accelerator.py results file",
    )
    p.add_argument("--chips", type=int, default=1, help="chips the study runs on (wall time)")
    p.add_argument(
        "--examples",
        nargs="+",
        metavar="NAME=ROWS",
        help="training rows of datasets whose size the plan cannot know (hub datasets)",
    )
    p = subparsers.add_parser("run", help="run or resume a study sweep")
    p.add_argument("manifest", help="study manifest (YAML)")
    p.add_argument("--workdir", help="sweep directory (default runs/sweeps/NAME)")
    p.add_argument("--executor", choices=("local", "ray"), help="override the manifest's")
    p.add_argument("--address", help="Ray cluster address (default: the manifest's or local)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help="override the manifest's executor.group_size (1: every run trains alone)",
    )
    p.add_argument(
        "--resources",
        metavar="JSON",
        help="Ray (implied): what each run or group asks for, replacing the manifest's, e.g. "
        "'{\"GPU\": 1}', '{\"GPU\": 0.5}' (two runs per GPU) or '{\"TPU\": 1}' (one chip)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = subparsers.add_parser(
        "simulate", help="power of a study design: run it with planted effects, no training"
    )
    p.add_argument("manifest", help="study manifest (YAML)")
    p.add_argument("--effects", required=True, help="planted effects (YAML; see README)")
    p.add_argument(
        "--noise",
        help="comma-separated overrides: seed_sd=POINTS, test_n=N, val_n=N, rho=SHARE "
        "(defaults: the --workdir study's, else 0.5, 2000, 1000, 0.5)",
    )
    p.add_argument("--repeats", type=int, default=20, help="simulated studies (default 20)")
    p.add_argument("--workdir", help="a finished study whose ledger gives the noise")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per analysis")
    p.add_argument("--keep", help="keep the simulated studies in this directory")
    p = subparsers.add_parser("status", help="counts, failures and best configs of a sweep")
    p.add_argument("workdir", help="sweep directory")
    p.add_argument("--csv", help="also export the ledger to this CSV file")


def main(argv: list[str] | None = None) -> int:
    from kdjax.config import USER_ERRORS

    parser = argparse.ArgumentParser(prog="kdjax-sweep", description=__doc__)
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
