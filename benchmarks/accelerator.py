"""What sets the study's cost, measured on one accelerator chip in one command (<= 8 minutes).

No network and no downloads: random-initialised models at the reference shapes, synthetic
tokens. Parts:

  a  student_step   the KD train step with cached teacher logits, students L4/H256, L4/H512,
                    L8/H512, batch 32 x 128 (classification) and 32 x 384 (extractive QA,
                    per-token logits), float32 and bfloat16 compute: examples/s and MFU
  b  grouped        K in {1, 2, 4, 8, 16, 32, 64} members of L4/H256 trained together
                    (`kdjax.training.grouped`): examples/s per member and in total
  c  teacher_pass   the bert-large-shaped teacher (24 layers, H1024) in eval mode, as it builds
                    cached logits (batch 128), and its fine-tuning train step: examples/s, MFU
  d  torch_step     part a's step in PyTorch (transformers' BERT, AdamW, autocast for bfloat16)
                    when torch sees an accelerator (on CPU only with --tiny)

MFU = model FLOPs per step (XLA's cost analysis of the compiled program) / step time / the
chip's peak dense bfloat16 FLOP/s (table below, or --peak-tflops). float32 rows are measured
against the same bfloat16 peak. Each case runs for --seconds after compiling; the compile time
is reported too. Every case is one JSON line on stdout (`bench`, `device`, and `mfu` or
`group_size`); all of them go to benchmarks/results/<device>.json (or --out). A case that fails
(out of memory, an unsupported shape) prints a line with `error` and the rest go on; cases
left when --budget-s is spent print `skipped`.

    python benchmarks/accelerator.py                 # the full run on the chip
    python benchmarks/accelerator.py --tiny --out /tmp/x.json   # toy sizes, CPU, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Peak dense bfloat16 TFLOP/s per chip by `jax.devices()[0].device_kind` (first match wins).
# Sources: NVIDIA datasheets (sparsity figures halved): H100 SXM and H200 989, H100 PCIe 756
# (nvidia.com/en-us/data-center/h100, /h200), A100 312 (/a100), L4 121 (/l4); Google Cloud
# TPU system architecture pages (docs.cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): v4 275,
# v5e 197, v5p 459, v6e 918.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
    (r"TPU v6", 918.0),
    (r"TPU v5 ?lite|TPU v5e", 197.0),
    (r"TPU v5", 459.0),
    (r"TPU v4", 275.0),
]


def peak_tflops(device_kind: str) -> float | None:
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_kind):
            return peak
    return None


DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Sizes:
    students: dict[str, tuple[int, int, int, int]]  # name: (layers, hidden, heads, intermediate)
    seqs: dict[int, tuple[str, ...]]  # sequence length: compute dtypes
    batch: int
    group_student: str
    group_seq: int
    group_sizes: tuple[int, ...]
    teacher: tuple[int, int, int, int]
    teacher_batch: int
    teacher_seqs: dict[int, tuple[str, ...]]
    vocab: int
    qa_from: int  # sequence lengths from here on are extractive QA (per-token logits)


FULL = Sizes(
    students={
        "L4/H256": (4, 256, 4, 1024),
        "L4/H512": (4, 512, 8, 2048),
        "L8/H512": (8, 512, 8, 2048),
    },
    seqs={128: DTYPES, 384: DTYPES},
    batch=32,
    group_student="L4/H256",
    group_seq=128,
    group_sizes=(1, 2, 4, 8, 16, 32, 64),
    teacher=(24, 1024, 16, 4096),
    teacher_batch=128,
    teacher_seqs={128: ("bfloat16", "float32"), 384: ("bfloat16",)},
    vocab=30522,
    qa_from=384,
)
TINY = Sizes(
    students={"L1/H32": (1, 32, 2, 64)},
    seqs={16: ("bfloat16",)},
    batch=4,
    group_student="L1/H32",
    group_seq=16,
    group_sizes=(2,),
    teacher=(1, 32, 2, 64),
    teacher_batch=4,
    teacher_seqs={16: ("float32",)},
    vocab=128,
    qa_from=16,  # the QA path (per-token logits) has more to check; grouped is classification
)


class Bench:
    """Collects rows, prints each as a JSON line, and keeps to the time budget."""

    def __init__(self, args: argparse.Namespace):
        dev = jax.devices()[0]
        self.device = dev.device_kind
        self.peak = args.peak_tflops or peak_tflops(dev.device_kind)
        self.platform = dev.platform
        self.seconds = args.seconds
        self.assume_mfu = args.assume_mfu
        self.deadline = time.time() + args.budget_s
        self.rows: list[dict[str, Any]] = []

    def emit(self, bench: str, **row: Any) -> None:
        out = {"bench": bench, "device": self.device, **row}
        self.rows.append(out)
        print(json.dumps(out), flush=True)

    def case(self, bench: str, fn, **what: Any) -> None:
        """Run `fn() -> dict` for one case and emit its row (or its error, or `skipped`)."""
        if time.time() > self.deadline:
            self.emit(bench, **what, skipped="time budget spent")
            return
        try:
            self.emit(bench, **what, **fn())
        except Exception as e:  # one failing case (OOM, unsupported shape) must not end the run
            traceback.print_exc(file=sys.stderr)
            self.emit(bench, **what, error=f"{type(e).__name__}: {str(e)[:300]}")

    def mfu(self, flops: float | None, step_s: float) -> float | None:
        if not flops or not self.peak:
            return None
        return float(f"{flops / step_s / (self.peak * 1e12):.4g}")


def _flops(make_jitted, *args) -> float | None:
    """Model FLOPs of one call: XLA's cost analysis of the lowered program with every layer
    unrolled (a scanned layer's FLOPs would be counted once, not once per layer).
    `make_jitted()` builds a fresh jitted function, so it is traced again unrolled."""
    from kdjax.models.encoder import layers_unrolled

    with layers_unrolled():
        cost = make_jitted().lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def _timed(call, seconds: float, min_steps: int = 3) -> tuple[int, float]:
    """Steps and wall seconds of calling `call()` (which blocks on nothing) until `seconds`
    have passed; the clock stops after the device finished the last step."""
    out = call()
    jax.block_until_ready(out)  # warm-up step
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        out = call()
        n += 1
        if n % 10 == 0:
            jax.block_until_ready(out)
    jax.block_until_ready(out)
    return n, time.perf_counter() - t0


def _measure(bench: Bench, flops, call, examples: int, compile_s: float) -> dict[str, Any]:
    """Time `call` (one step of `compiled`, processing `examples`); with --assume-mfu, only
    derive the step time from the program's FLOPs at that MFU of the peak (nothing runs)."""
    if bench.assume_mfu:
        if not flops or not bench.peak:
            raise ValueError("--assume-mfu needs the program's FLOPs and a peak (--peak-tflops)")
        step_s = flops / (bench.assume_mfu * bench.peak * 1e12)
        return {
            "examples_per_s": round(examples / step_s, 2),
            "step_s": step_s,
            "flops_per_step": flops,
            "mfu": bench.assume_mfu,
            "assumed": True,
            "compile_s": round(compile_s, 2),
        }
    n, secs = _timed(call, bench.seconds)
    return {
        "examples_per_s": round(examples * n / secs, 2),
        "step_s": round(secs / n, 6),
        "flops_per_step": flops,
        "mfu": bench.mfu(flops, secs / n),
        "compile_s": round(compile_s, 2),
        "steps": n,
    }


def _encoder_cfg(arch: tuple[int, int, int, int], vocab: int):
    from kdjax.models.config import EncoderConfig

    layers, hidden, heads, inter = arch
    return EncoderConfig(
        vocab_size=vocab,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
    )


def _model(arch, vocab: int, task: str):
    from flax import nnx

    from kdjax.models.encoder import Model, create

    cfg = _encoder_cfg(arch, vocab)
    return nnx.split(create(lambda: Model(cfg, task, 2, rngs=nnx.Rngs(0))))


def _batch(task: str, rows: int, seq: int, vocab: int, cached_shape=None) -> dict[str, np.ndarray]:
    """Synthetic tokens with padding (lengths from seq/2 to seq) and labels of `task`."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(seq // 2, seq + 1, size=rows)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    b = {
        "input_ids": (rng.integers(1, vocab, size=(rows, seq)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((rows, seq), np.int32),
        "weight": np.ones(rows, np.float32),
    }
    if task == "extractive_qa":
        starts = rng.integers(1, seq // 2, size=rows)
        b["labels"] = np.stack([starts, starts + 2], axis=1).astype(np.int32)
        b["context_mask"] = mask.astype(bool)
        logits = (rows, seq, 2)
    else:
        b["labels"] = rng.integers(0, 2, size=rows).astype(np.int32)
        logits = (rows, 2)
    if cached_shape is not None:
        logits = cached_shape(logits)
    b["teacher_logits"] = rng.normal(size=logits).astype(np.float32)
    return b


def student_step(bench: Bench, arch, seq: int, dtype: str, sz: Sizes) -> dict[str, Any]:
    from kdjax.config import KDConfig, TrainConfig
    from kdjax.training.step import (
        init_state,
        kd_hparams,
        make_optimizer,
        make_train_step,
        objective,
    )

    task = "extractive_qa" if seq >= sz.qa_from else "classification"
    graphdef, params = _model(arch, sz.vocab, task)
    tx, _ = make_optimizer(TrainConfig(learning_rate=1e-4), 10_000)
    kd = KDConfig(distance="ce", alpha=0.5, tau_t=2.0)
    make = lambda: make_train_step(
        graphdef, tx, objective(task, kd), compute_dtype=jnp.dtype(dtype)
    )
    step = make()
    state = init_state(params, tx)
    batch = jax.device_put(_batch(task, sz.batch, seq, sz.vocab))
    key, hp = jax.random.key(0), kd_hparams(kd)
    t0 = time.perf_counter()
    compiled = step.lower(state, None, batch, key, hp).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], None, batch, key, hp)
        return metrics["loss"]

    flops = _flops(make, state, None, batch, key, hp)
    return {"task": task, **_measure(bench, flops, call, sz.batch, compile_s)}


def grouped(bench: Bench, k: int, dtype: str, sz: Sizes) -> dict[str, Any]:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from kdjax.config import TrainConfig
    from kdjax.training.grouped import _member_loss, _stack, make_group_step
    from kdjax.training.mesh import data_sharded, make_mesh
    from kdjax.training.step import init_state, make_optimizer

    mesh = make_mesh(devices=jax.devices()[:1])  # one chip
    rep = NamedSharding(mesh, P())
    graphdef, params = _model(sz.students[sz.group_student], sz.vocab, "classification")
    tc = TrainConfig(learning_rate=1e-4, compute_dtype=dtype)
    state = init_state(params, make_optimizer(tc, 10_000)[0], rep)
    sharding = jax.tree.map(lambda x: NamedSharding(mesh, P(None, *x.sharding.spec)), state)
    states = _stack([state] * k, sharding)
    del state
    loss_fn = _member_loss("classification", False, ["ce", "mse"])
    make = lambda: make_group_step(graphdef, tc, 10_000, loss_fn, sharding, data_sharded(mesh))
    step = make()
    f32 = lambda v: np.full(k, v, np.float32)
    hp = {
        "alpha": f32(0.5),
        "tau_t": f32(2.0),
        "tau_s": f32(2.0),
        "lr": f32(1e-4),
        "distance": np.arange(k, dtype=np.int32) % 2,
        "teacher": np.zeros(k, np.int32),
    }
    health = {"failed_at": np.zeros(k, np.int32), "loss": np.zeros(k, np.float32)}
    key, hp, health = jax.device_put((jax.random.key(0), hp, health), rep)
    rows = _batch("classification", sz.batch, sz.group_seq, sz.vocab, lambda s: (s[0], 1, *s[1:]))
    batch = jax.device_put(rows, data_sharded(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(states, health, batch, key, hp).compile()
    compile_s = time.perf_counter() - t0
    holder = [states, health]

    def call():
        holder[0], holder[1], metrics = compiled(holder[0], holder[1], batch, key, hp)
        return metrics["loss"]

    flops = _flops(make, states, health, batch, key, hp)
    row = _measure(bench, flops, call, sz.batch * k, compile_s)
    total = row.pop("examples_per_s")
    return {"examples_per_s_total": total, "examples_per_s_per_member": round(total / k, 2), **row}


def teacher_pass(bench: Bench, seq: int, dtype: str, sz: Sizes) -> dict[str, Any]:
    from kdjax.training.step import make_predict

    graphdef, params = _model(sz.teacher, sz.vocab, "classification")
    make = lambda: make_predict(graphdef, jnp.dtype(dtype))
    predict = make()
    rows = _batch("classification", sz.teacher_batch, seq, sz.vocab)
    batch = jax.device_put({k: v for k, v in rows.items() if k != "teacher_logits"})
    t0 = time.perf_counter()
    compiled = predict.lower(params, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(make, params, batch)
    return _measure(bench, flops, lambda: compiled(params, batch), sz.teacher_batch, compile_s)


def torch_step(bench: Bench, arch, seq: int, dtype: str, sz: Sizes, device: str):
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    task = "extractive_qa" if seq >= sz.qa_from else "classification"
    layers, hidden, heads, inter = arch
    cfg = BertConfig(
        vocab_size=sz.vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        num_labels=2,
    )
    cls = BertForQuestionAnswering if task == "extractive_qa" else BertForSequenceClassification
    model = cls(cfg).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-4
    )
    rows = _batch(task, sz.batch, seq, sz.vocab)
    b = {k: torch.tensor(v, device=device) for k, v in rows.items()}
    inputs = {k: b[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def kd(s, t, y):
        soft = -(F.softmax(t / 2.0, -1) * F.log_softmax(s / 2.0, -1)).sum(-1).mean()
        return 0.5 * F.cross_entropy(s, y) + 0.5 * soft

    def call():
        with amp:
            out = model(**inputs)
        if task == "extractive_qa":
            t = b["teacher_logits"]
            loss = (
                kd(out.start_logits.float(), t[..., 0], b["labels"][:, 0].long())
                + kd(out.end_logits.float(), t[..., 1], b["labels"][:, 1].long())
            ) / 2
        else:
            loss = kd(out.logits.float(), b["teacher_logits"], b["labels"].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    call()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < bench.seconds:
        call()
        n += 1
    sync()
    secs = time.perf_counter() - t0
    return {
        "task": task,
        "torch_device": device,
        "torch": torch.__version__,
        "examples_per_s": round(sz.batch * n / secs, 2),
        "step_s": round(secs / n, 6),
        "steps": n,
    }


def _torch_device(tiny: bool) -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if tiny else None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy sizes: every part, on CPU, quickly")
    p.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    p.add_argument("--peak-tflops", type=float, help="the chip's peak dense bf16 TFLOP/s")
    p.add_argument("--seconds", type=float, help="timed seconds per case (default 2, tiny 0)")
    p.add_argument(
        "--assume-mfu",
        type=float,
        help="no timing: step times from the compiled FLOPs at this MFU of --peak-tflops "
        "(a projection for a chip not at hand; rows are marked assumed)",
    )
    p.add_argument("--budget-s", type=float, default=450.0, help="skip cases after this")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<device>.json")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.0 if args.tiny else 2.0
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error(f"--peak-tflops: must be > 0, got {args.peak_tflops}")
    if args.assume_mfu is not None and not (0 < args.assume_mfu <= 1 and args.peak_tflops):
        p.error("--assume-mfu: must be in (0, 1] and needs --peak-tflops")
    bad = set(args.parts) - set("abcd")
    if bad or not args.parts:
        p.error(f"--parts: letters from 'abcd', got {args.parts!r}")
    sz = TINY if args.tiny else FULL
    bench = Bench(args)
    started = time.time()
    bench.emit(
        "meta",
        platform=bench.platform,
        peak_tflops=bench.peak,
        tiny=args.tiny,
        jax=jax.__version__,
        python=platform.python_version(),
        peak_basis="dense bfloat16",
    )
    if "a" in args.parts:
        for name, arch in sz.students.items():
            for seq, dtypes in sz.seqs.items():
                for dtype in dtypes:
                    bench.case(
                        "student_step",
                        lambda a=arch, s=seq, d=dtype: student_step(bench, a, s, d, sz),
                        model=name,
                        batch=sz.batch,
                        seq=seq,
                        dtype=dtype,
                    )
    if "c" in args.parts:
        for seq in sz.teacher_seqs:
            for dtype in sz.teacher_seqs[seq]:
                bench.case(
                    "teacher_pass",
                    lambda s=seq, d=dtype: teacher_pass(bench, s, d, sz),
                    model="tiny" if args.tiny else "L24/H1024",
                    batch=sz.teacher_batch,
                    seq=seq,
                    dtype=dtype,
                )
        if not args.tiny:  # part a's code at the teacher's size (--tiny runs it in part a)
            seq = next(iter(sz.seqs))
            for dtype in ("bfloat16", "float32"):
                bench.case(
                    "teacher_step",
                    lambda d=dtype: student_step(bench, sz.teacher, seq, d, sz),
                    model="L24/H1024",
                    batch=sz.batch,
                    seq=seq,
                    dtype=dtype,
                )
    if "b" in args.parts:
        for k in sz.group_sizes:
            bench.case(
                "grouped",
                lambda k=k: grouped(bench, k, "float32", sz),
                group_size=k,
                model=sz.group_student,
                batch=sz.batch,
                seq=sz.group_seq,
                dtype="float32",
            )
    if "d" in args.parts:
        device = _torch_device(args.tiny)
        for name, arch in sz.students.items():
            for seq, dtypes in sz.seqs.items():
                for dtype in dtypes:
                    what = dict(model=name, batch=sz.batch, seq=seq, dtype=dtype)
                    if device is None:
                        bench.emit("torch_step", **what, skipped="torch sees no accelerator")
                        continue
                    bench.case(
                        "torch_step",
                        lambda a=arch, s=seq, d=dtype: torch_step(bench, a, s, d, sz, device),
                        **what,
                    )
    bench.emit("end", wall_s=round(time.time() - started, 1))
    out = args.out or Path(__file__).parent / "results" / (
        re.sub(r"[^A-Za-z0-9._-]+", "_", bench.device).strip("_") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": bench.device, "rows": bench.rows}, indent=1) + "\n")
    return bench.rows


if __name__ == "__main__":
    main()
