"""Wall time of building a tokenised extractive-QA dataset: tokenising it vs reading it back from
the tokenised-data cache, in one process.

A SQuAD-shaped file (long contexts, several windows per question at `--max-length` with
`--stride`) is built three ways: without a cache (what every run did before the cache), cached
on first use (tokenise + store), and cached warm (what every later run of a study with the same
data and tokenizer does: read and verify). Both include reading and splitting the raw file.

    python benchmarks/data_cache.py [--questions 2000] [--max-length 384] [--stride 128]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def _squad(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = ("the a river city old new team won lost built history people found early late "
             "north south music film war king queen law church school").split()  # fmt: skip
    paragraphs = []
    for i in range(n):
        context = " ".join(rng.choice(words) for _ in range(rng.randint(150, 450)))
        answer = f"answer{i}"
        at = rng.randint(0, len(context) // 2)
        at = context.index(" ", at) + 1 if " " in context[at:] else 0
        context = context[:at] + answer + " " + context[at:]
        qa = {"id": str(i), "question": " ".join(rng.choice(words) for _ in range(8)) + "?",
              "answers": [{"text": answer, "answer_start": at}]}  # fmt: skip
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--stride", type=int, default=128)
    args = p.parse_args()

    from transformers import AutoTokenizer

    from kdjax.config import DataConfig
    from kdjax.data import build_dataset
    from kdjax.data.sources import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _squad(tmp / "train.json", args.questions)
        _squad(tmp / "dev.json", args.questions // 4, seed=1)
        files = {"train": str(tmp / "train.json"), "validation": str(tmp / "dev.json")}
        cfg = DataConfig(source="files", files=files, max_length=args.max_length,
                         doc_stride=args.stride)  # fmt: skip

        def timed(cache_dir):
            t = time.perf_counter()
            ds = build_dataset(cfg, tokenizer, "extractive_qa", cache_dir=cache_dir)
            return time.perf_counter() - t, ds

        none_s, ds = timed(None)
        first_s, _ = timed(tmp / "cache")
        warm_s, again = timed(tmp / "cache")
        assert again.rows_sha256 == ds.rows_sha256
        size = sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file())
    print(json.dumps({
        "benchmark": "data_cache", "task": "extractive_qa", "questions": args.questions,
        "max_length": args.max_length, "stride": args.stride,
        "rows": {s: len(e) for s, e in ds.splits.items()},
        "no_cache_s": round(none_s, 3), "cached_first_use_s": round(first_s, 3),
        "cached_warm_s": round(warm_s, 3), "speedup_warm": round(none_s / warm_s, 2),
        "cache_mb": round(size / 2**20, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
