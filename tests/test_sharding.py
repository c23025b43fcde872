"""The data-parallel step on 8 fake devices equals the single-device step."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from kdjax.config import KDConfig, MeshConfig, TrainConfig
from kdjax.models import random_student
from kdjax.models.config import EncoderConfig
from kdjax.training.mesh import data_sharded, make_mesh, pad_batch, param_sharding, put_batch
from kdjax.training.step import (
    init_state,
    kd_hparams,
    make_optimizer,
    make_train_step,
    objective,
)

BASE = EncoderConfig(vocab_size=97, max_position_embeddings=32)


def _batch(n, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, size=(n, 1))).astype(np.int32)
    return {
        "input_ids": (rng.integers(1, 97, size=(n, seq)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((n, seq), np.int32),
        "labels": rng.integers(0, 3, size=n).astype(np.int32),
    }


def _train(mesh, batches, steps=2):
    rule = param_sharding(mesh)
    size = dict(layers=2, hidden=32, heads=4, intermediate=64, base=BASE)
    student = random_student("classification", 3, seed=1, sharding=rule, **size)
    teacher = random_student("classification", 3, seed=2, sharding=rule, **size)
    graphdef, params = nnx.split(student)
    t_graphdef, t_params = nnx.split(teacher)
    tx, _ = make_optimizer(TrainConfig(learning_rate=1e-3, warmup_ratio=0.0), steps)
    kd = KDConfig(distance="kl", alpha=0.7, tau_t=2.0, tau_s=1.0)
    state = init_state(params, tx, rule)
    step = make_train_step(
        graphdef,
        tx,
        objective("classification", kd),
        teacher_graphdef=t_graphdef,
        state_sharding=jax.tree.map(lambda x: x.sharding, state),
        teacher_sharding=jax.tree.map(lambda x: x.sharding, t_params),
        batch_sharding=data_sharded(mesh),
    )
    key = jax.random.key(0)
    losses = []
    for b in batches[:steps]:
        state, m = step(state, t_params, put_batch(b, mesh), key, kd_hparams(kd))
        losses.append(float(m["loss"]))
    return jax.device_get(nnx.to_pure_dict(state.params)), losses, state


@functools.cache
def _single_device(batch_size):
    batches = [_batch(batch_size, seed=s) for s in range(2)]
    params, losses, _ = _train(make_mesh(MeshConfig(data=1)), batches)
    return params, losses


MESHES = {"data8": MeshConfig(data=8), "data2xfsdp4": MeshConfig(data=2, fsdp=4)}


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("batch_size", [16, 12])  # 12 is not divisible by 8 devices
def test_sharded_step_equals_single_device(batch_size, mesh_name):
    assert len(jax.devices()) == 8
    batches = [_batch(batch_size, seed=s) for s in range(2)]
    p8, l8, state8 = _train(make_mesh(MESHES[mesh_name]), batches)
    p1, l1 = _single_device(batch_size)
    np.testing.assert_allclose(l8, l1, atol=1e-5, rtol=0)
    flat8, flat1 = jax.tree.leaves(p8), jax.tree.leaves(p1)
    assert len(flat8) == len(flat1) > 0
    for a, b in zip(flat8, flat1, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    if mesh_name == "data2xfsdp4":  # params and Adam moments really are split over fsdp
        kernel = state8.params["encoder"]["layers"][0]["intermediate"]["kernel"][...]
        assert "fsdp" in kernel.sharding.spec and len(kernel.addressable_shards) == 8
        assert kernel.addressable_shards[0].data.shape[1] == 64 // 4
    # The update really moved the params (the comparison is not between two initial states).
    size = dict(layers=2, hidden=32, heads=4, intermediate=64, base=BASE)
    _, params0 = nnx.split(random_student("classification", 3, seed=1, **size))
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(flat1, jax.tree.leaves(nnx.to_pure_dict(params0)), strict=True)
    )
    assert moved > 1e-4


def test_padding_rows_carry_no_weight():
    b = pad_batch(_batch(5), 8)
    assert b["input_ids"].shape[0] == 8 and b["weight"].tolist() == [1] * 5 + [0] * 3
    mesh = make_mesh(MeshConfig(data=8))
    placed = put_batch(_batch(5), mesh)
    assert placed["input_ids"].shape[0] == 8
    assert placed["input_ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_mesh_size_is_checked():
    with pytest.raises(ValueError, match=r"mesh.data: must be -1 or in \[1, 8\]"):
        make_mesh(MeshConfig(data=9))
    with pytest.raises(ValueError, match=r"mesh.fsdp: must divide the 8 devices here, got 3"):
        make_mesh(MeshConfig(fsdp=3))
    assert dict(make_mesh(MeshConfig(fsdp=2)).shape) == {"data": 4, "fsdp": 2}


def test_bfloat16_compute_keeps_float32_params_and_close_loss():
    mesh = make_mesh(MeshConfig(data=1))
    rule = param_sharding(mesh)
    size = dict(layers=2, hidden=32, heads=4, intermediate=64, base=BASE)
    graphdef, params = nnx.split(random_student("classification", 3, seed=1, sharding=rule, **size))
    tx, _ = make_optimizer(TrainConfig(learning_rate=1e-3, warmup_ratio=0.0), 2)
    batch = put_batch(_batch(8), mesh)
    losses = {}
    for dtype in (None, jax.numpy.bfloat16):
        step = make_train_step(graphdef, tx, objective("classification", None), compute_dtype=dtype)
        state, m = step(init_state(params, tx), None, batch, jax.random.key(0), None)
        losses[dtype] = float(m["loss"])
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    # Same loss to bf16 precision (8 bits of mantissa), not bit-equal.
    assert losses[None] != losses[jax.numpy.bfloat16]
    np.testing.assert_allclose(losses[jax.numpy.bfloat16], losses[None], rtol=2e-2)


def test_compile_check_reports_memory_and_flops(tmp_path):
    from kdjax.config import parse_config
    from kdjax.training.compile_check import architecture, compile_check

    cfg = parse_config(
        {
            "task": "token_classification",
            "data": {"preset": "conll2003", "max_length": 32},
            "model": {
                "init": "random",
                "layers": 2,
                "hidden": 32,
                "heads": 4,
                "intermediate": 64,
                "tokenizer": "all-minilm-l6-v2",
            },
            "teacher": "all-minilm-l6-v2",
            "teacher_mode": "online",
            "kd": {"alpha": 0.5},
            "train": {"batch_size": 12},
            "mesh": {"data": 2, "fsdp": 4},
            "output_dir": str(tmp_path),
        }
    )
    report = compile_check(cfg, device_memory_gb=16)
    assert report["mesh"] == {"data": 2, "fsdp": 4} and report["global_batch"] == 16
    assert report["teacher_params"] > 22_000_000 > report["student_params"] > 1_000_000
    assert report["flops_per_step"] > 0 and report["per_device_bytes"]["arguments"] > 0
    assert report["fits"] is True
    assert architecture("google-bert/bert-large-uncased").num_layers == 24
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture("someone/unknown-model")
