"""`kdjax` command line: finetune, distill, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kdjax.config import ConfigError, load_config


def _run(args, kind: str) -> None:
    from kdjax.training import train

    over = {"output_dir": args.output_dir} if args.output_dir else {}
    cfg = load_config(args.config, over)
    if kind == "finetune" and cfg.teacher is not None:
        raise ConfigError(f"{args.config}: teacher: not used by finetune; use `kdjax distill`")
    if kind == "distill" and (cfg.teacher is None or cfg.kd is None):
        raise ConfigError(f"{args.config}: distill needs both `teacher` and `kd` sections")
    result = train(cfg, progress=not args.quiet)
    print(
        f"{kind} done: best epoch {result['best_epoch']}, validation {result['validation']}, "
        f"test {result['test']} -> {cfg.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdjax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("finetune", "fine-tune a model (a teacher) on labels"),
        ("distill", "distil a student from a teacher"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run config")
        p.add_argument("--output-dir", help="override output_dir from the config")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("demo", help="the offline demo: teacher, no-KD student, KD student")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command == "demo":
            from kdjax.demo import run_demo

            run_demo(args.workdir, fresh=args.fresh)
        else:
            _run(args, args.command)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
