"""`kdjax` command line: single runs, the study sweep, presets, checks and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from kdjax.analysis.report import add_parser as add_report_parser
from kdjax.config import USER_ERRORS, ConfigError, load_config
from kdjax.sweep.cli import COMMANDS as SWEEP_COMMANDS
from kdjax.sweep.cli import add_parsers as add_sweep_parsers


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


def _datasets(args) -> None:
    from kdjax.presets import dataset_presets

    presets = dataset_presets()
    if args.json:
        for p in presets.values():
            d = p.data
            print(
                json.dumps(
                    {
                        "name": p.name,
                        "task": p.task,
                        "family": p.family,
                        "metric": p.metric,
                        "source": p.source,
                        "hub": d.hub.model_dump() if d.hub else None,
                        "split_note": p.split_note,
                        "labels": list(d.labels) if d.labels else None,
                        "max_length": d.max_length,
                    }
                )
            )
        return
    width = max(len(n) for n in presets)
    for p in presets.values():
        print(f"{p.name:<{width}}  {p.family:<14}  {p.metric:<8}  {p.source}")


def _students(args) -> None:
    from kdjax.presets import student_presets

    for p in student_presets().values():
        if args.json:
            print(json.dumps({"name": p.name, "description": p.description, "model": p.model}))
        else:
            print(f"{p.name:<14}  {p.description}")


def _compile_check(args) -> None:
    from kdjax.training.compile_check import compile_check

    over = {"output_dir": "unused"}
    cfg = load_config(args.config, over)
    if args.batch_size:
        cfg = cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"batch_size": args.batch_size})}
        )
    print(json.dumps(compile_check(cfg, args.device_memory_gb), indent=2))


def enable_compile_cache() -> None:
    """JAX's persistent compilation cache: a study's runs of one student size compile the same
    programs (KD numbers are step inputs), so all but the first load them from disk. Set
    KDJAX_COMPILE_CACHE to choose the folder, or to an empty string to turn it off."""
    path = os.environ.get("KDJAX_COMPILE_CACHE", str(Path.home() / ".cache" / "kdjax" / "jax"))
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdjax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed); same as KDJAX_DISTRIBUTED=1",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("finetune", "fine-tune a model on labels (keeps hs and ll checkpoints)"),
        ("teacher", "fine-tune a teacher: the same as finetune"),
        ("distill", "distil a student from a teacher run (teacher_checkpoint: hs | ll)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run config")
        p.add_argument("--output-dir", help="override output_dir from the config")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("datasets", help="list the dataset presets (experiments/datasets)")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")
    p = sub.add_parser("students", help="list the student presets (experiments/students.yaml)")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")
    p = sub.add_parser(
        "compile-check",
        help="compile a config's train step for its mesh and print per-device memory and FLOPs",
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument("--devices", type=int, help="simulate this many devices (CPU host devices)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (global)")
    p.add_argument("--device-memory-gb", type=float, help="say whether it fits in this much")
    p = sub.add_parser(
        "check",
        help="preflight a study manifest: every dataset, teacher and student (exit 0 ready, "
        "1 something fails, 3 not fully verified offline)",
    )
    p.add_argument("manifest", help="study manifest (YAML)")
    p = sub.add_parser("convert", help="convert a raw dataset file for `data.source: files`")
    p.add_argument("kind", choices=("trec", "wnut17", "ontonotes"))
    p.add_argument("src", help="the raw file (TREC .label, WNUT-17 CoNLL, tner JSON lines)")
    p.add_argument("out", help="the file to write (.jsonl; .conll for wnut17)")
    p = sub.add_parser("demo", help="the offline demo: teacher, no-KD student, KD student")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    add_sweep_parsers(sub)
    add_report_parser(sub)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if getattr(args, "devices", None):  # before JAX initialises its backends
        os.environ["JAX_PLATFORMS"] = "cpu"
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    enable_compile_cache()
    if args.command == "run":  # one driver per study: refused before joining any job
        from kdjax.distributed import refuse_study_under_distributed

        try:
            refuse_study_under_distributed(args.distributed)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.distributed or os.environ.get("KDJAX_DISTRIBUTED"):
        from kdjax.distributed import initialize

        initialize(force=args.distributed)
    try:
        if args.command == "datasets":
            _datasets(args)
        elif args.command == "students":
            _students(args)
        elif args.command == "check":
            from kdjax.check import run_check

            return run_check(args.manifest)
        elif args.command == "convert":
            from kdjax.data.convert import convert

            print(convert(args.kind, args.src, args.out))
        elif args.command == "compile-check":
            _compile_check(args)
        elif args.command == "report":
            from kdjax.analysis.report import cmd_report

            cmd_report(args)
        elif args.command in SWEEP_COMMANDS:
            SWEEP_COMMANDS[args.command](args)
        elif args.command == "demo":
            from kdjax.demo import run_demo

            run_demo(args.workdir, fresh=args.fresh)
        else:
            _run(args, "finetune" if args.command == "teacher" else args.command)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
