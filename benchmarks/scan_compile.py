"""Compile time of a deep encoder's forward pass: layers unrolled (as kdjax runs them) vs one
layer scanned over stacked params (`jax.lax.scan`, what `nnx.scan` builds), side by side.

Decides whether scanning layers is worth its cost (stacked params no longer map one to one
to checkpoint keys): it only pays if the 24-layer teacher compiles much faster.

    python benchmarks/scan_compile.py [--layers 24] [--hidden 1024] [--seq 128] [--batch 128]

Prints one JSON line: lower+compile seconds of each and the largest output difference.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import DropoutKeys, Model, create


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    h = args.hidden
    cfg = EncoderConfig(
        num_layers=args.layers,
        hidden_size=h,
        num_heads=max(1, h // 64),
        intermediate_size=4 * h,
        max_position_embeddings=512,
    )
    graphdef, params = nnx.split(create(lambda: Model(cfg, "classification", 2, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)

    def unrolled(params, ids, mask):
        return nnx.merge(graphdef, params)(ids, mask)

    layer_def = nnx.split(nnx.merge(graphdef, params).encoder.layers[0])[0]

    def scanned(params, ids, mask):
        model = nnx.merge(graphdef, params)
        layers = [nnx.split(layer)[1] for layer in model.encoder.layers]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        drop = DropoutKeys(None)
        x = model.encoder.embeddings(ids, jnp.zeros_like(ids), drop)
        keys = mask[:, None, None, :] > 0

        def body(x, p):
            return nnx.merge(layer_def, p)(x, keys, drop), None

        x = jax.lax.scan(body, x, stacked)[0]
        return model.head(jnp.tanh(model.pooler(x[:, 0])))

    out, row = (
        {},
        {
            "benchmark": "scan_compile",
            "layers": args.layers,
            "hidden": h,
            "seq": args.seq,
            "batch": args.batch,
            "backend": jax.default_backend(),
        },
    )
    for name, fn in (("unrolled", unrolled), ("scanned", scanned)):
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(params, ids, mask).compile()
        row[f"{name}_compile_s"] = round(time.perf_counter() - t0, 2)
        out[name] = np.asarray(compiled(params, ids, mask))
    row["max_abs_diff"] = float(np.abs(out["unrolled"] - out["scanned"]).max())
    print(json.dumps(row))


if __name__ == "__main__":
    main()
