"""Checkpoints laid out like Google's BERT miniatures load without torch, equal to transformers'
PyTorch BertModel; a pickle that names anything but tensors is refused; one weight file is fetched.

The miniatures' main branch (google/bert_uncased_L-4_H-256_A-4, L-4_H-512_A-8, L-8_H-512_A-8)
holds pytorch_model.bin, flax_model.msgpack, a TF checkpoint, config.json and vocab.txt: no
model.safetensors and no tokenizer files. Its config.json is Google's original bert_config.json
key set (attention_probs_dropout_prob, hidden_act, hidden_dropout_prob, hidden_size,
initializer_range, intermediate_size, max_position_embeddings, num_attention_heads,
num_hidden_layers, type_vocab_size, vocab_size) without `model_type`.
"""

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from fixtures import require

torch = require("torch")  # reference outputs; part of kdjax[test]: fails, never skips, there
transformers = require("transformers")

from kdjax.models.hub import checkpoint_files, download_checkpoint  # noqa: E402
from kdjax.models.weights import UnsafeCheckpoint, read_torch_bin, weight_files  # noqa: E402

WORDS = "the a film movie good bad great dull plot acting was is not very".split()
VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ly"]
HF = {  # the bert_config.json keys, no model_type, tiny sizes
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "type_vocab_size": 2,
    "vocab_size": len(VOCAB),
}
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def _flax_tree(sd: dict) -> dict:
    """transformers' FlaxBertForPreTraining parameter tree for a PyTorch state dict: the same
    module path, Dense `kernel` [in, out], nn.Embed `embedding`, LayerNorm `scale`/`bias`, and no
    decoder weight (Flax ties it to the word embeddings)."""
    tree: dict = {}
    for key, t in sd.items():
        if key.startswith("cls.predictions.decoder"):
            continue
        *path, leaf = key.split(".")
        value = t.numpy()
        if leaf == "weight" and path[-1] == "LayerNorm":
            leaf = "scale"
        elif leaf == "weight" and path[-1] in _EMBEDDINGS:
            leaf = "embedding"
        elif leaf == "weight":
            leaf, value = "kernel", value.T
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(value)
    return tree


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """(reference BertModel, {layout name: directory})."""
    from flax.serialization import msgpack_serialize

    torch.manual_seed(0)
    ref = transformers.BertForPreTraining(transformers.BertConfig(**HF)).eval()
    sd = ref.state_dict()
    assert any(k.startswith("cls.") for k in sd) and all(
        k.startswith(("bert.", "cls.")) for k in sd
    )
    dirs = {}
    for name in ("main", "bin_zip", "bin_legacy"):
        d = tmp_path_factory.mktemp(name)
        (d / "config.json").write_text(json.dumps(HF, indent=2) + "\n")
        (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        dirs[name] = d
    # main: every format the miniatures' main branch has (the TF files are never read).
    torch.save(sd, dirs["main"] / "pytorch_model.bin")
    (dirs["main"] / "flax_model.msgpack").write_bytes(msgpack_serialize(_flax_tree(sd)))
    (dirs["main"] / "tf_model.h5").write_bytes(b"not read")
    torch.save(sd, dirs["bin_zip"] / "pytorch_model.bin")
    torch.save(sd, dirs["bin_legacy"] / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    return ref.bert, dirs


# Runs with torch not importable: the encoder's last hidden state from the main layout (which
# reads flax_model.msgpack), the other layouts' weights compared with it, the tokenizer's ids.
_NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import jax.numpy as jnp, numpy as np
from kdjax.models import from_pretrained
from kdjax.models.hf import _normalise_keys
from kdjax.models.tokenizer import load_tokenizer
from kdjax.models.weights import read_weights
ids, mask, types = (np.array(x) for x in json.loads(sys.argv[1]))
dirs = json.loads(sys.argv[2])
m = from_pretrained(dirs["main"], "classification", 2)
out = {"hidden": np.asarray(m.encoder(*map(jnp.asarray, (ids, mask, types)))).tolist()}
ref = _normalise_keys(read_weights(dirs["main"]), "bert")
for name, path in dirs.items():
    w = _normalise_keys(read_weights(path), "bert")
    out[name] = {
        "keys_equal": sorted(w) == sorted(ref),
        "max_diff": max(float(np.abs(w[k] - ref[k]).max()) for k in ref),
        "ids": load_tokenizer(path)("The FILM was Great")["input_ids"],
    }
out["torch_loaded"] = sys.modules["torch"] is not None
print(json.dumps(out))
"""


def test_miniature_layouts_load_without_torch(miniature):
    bert, dirs = miniature
    assert weight_files([p.name for p in dirs["main"].iterdir()]) == ["flax_model.msgpack"]
    rng = np.random.default_rng(0)
    ids = rng.integers(6, len(VOCAB), size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    types = np.zeros_like(ids)
    types[0, 4:] = 1
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            json.dumps([ids.tolist(), mask.tolist(), types.tolist()]),
            json.dumps({k: str(v) for k, v in dirs.items()}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        theirs = bert(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert real.sum() < real.size  # the batch really has padding
    ours = np.asarray(got["hidden"])
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
    assert not got["torch_loaded"]
    want_ids = [VOCAB.index(t) for t in ("[CLS]", "the", "film", "was", "great", "[SEP]")]
    for name in dirs:  # the zip and legacy .bin hold exactly the msgpack's weights
        assert got[name]["keys_equal"] and got[name]["max_diff"] == 0.0, name
        assert got[name]["ids"] == want_ids, name  # uncased vocabulary: lower-cased input


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch HACKED",))


def test_a_pickle_naming_other_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"w": _Boom()}, protocol=2)
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:  # laid out as torch.save's archive
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    with pytest.raises(UnsafeCheckpoint, match=r"global (posix|os)\.system"):
        read_torch_bin(path)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(payload)
    with pytest.raises(UnsafeCheckpoint, match=r"global (posix|os)\.system"):
        read_torch_bin(legacy)
    assert not (tmp_path / "HACKED").exists()
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a torch.save file"):
        read_torch_bin(tmp_path / "junk.bin")


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    sd = {"w": torch.arange(6, dtype=torch.float32)}
    torch.save(sd, tmp_path / "ok.bin")
    assert read_torch_bin(tmp_path / "ok.bin")["w"].tolist() == list(range(6))
    with zipfile.ZipFile(tmp_path / "ok.bin") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    # Shrink the storage so the pickled tensor (6 floats) would read past it.
    data = next(n for n in members if "/data/" in n)
    members[data] = members[data][:8]
    with zipfile.ZipFile(tmp_path / "bad.bin", "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    assert pkl
    with pytest.raises(ValueError, match="reaches past"):
        read_torch_bin(tmp_path / "bad.bin")


MINIATURE_FILES = [
    ".gitattributes",
    "README.md",
    "config.json",
    "flax_model.msgpack",
    "pytorch_model.bin",
    "tf_model.h5",
    "vocab.txt",
]
LARGE_FILES = [
    ".gitattributes",
    "README.md",
    "config.json",
    "coreml/model.mlmodel",
    "flax_model.msgpack",
    "model.onnx",
    "model.safetensors",
    "pytorch_model.bin",
    "rust_model.ot",
    "tf_model.h5",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
]


def test_one_weight_file_is_downloaded(monkeypatch, tmp_path):
    assert checkpoint_files(MINIATURE_FILES, "m") == [
        "config.json",
        "vocab.txt",
        "flax_model.msgpack",
    ]
    picked = checkpoint_files(LARGE_FILES, "l")
    assert [f for f in picked if "model" in f and f != "tokenizer_config.json"] == [
        "model.safetensors"
    ]
    sharded = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model.bin",
    ]
    assert checkpoint_files(sharded, "s")[1:] == sharded[1:4]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoint_files(["pytorch_model.bin"], "x")

    import huggingface_hub

    fetched = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, r, revision=None: LARGE_FILES
    )

    def fake_download(repo, filename, revision=None):
        fetched.append(filename)
        (tmp_path / filename).write_text("{}")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert download_checkpoint("google-bert/bert-large-uncased") == tmp_path
    assert sorted(fetched) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


def test_a_hub_id_is_accepted_as_teacher(monkeypatch, tmp_path):
    from kdjax.models.hf import teacher_head_problem
    from kdjax.training import teacher

    monkeypatch.setattr(teacher, "resolve_checkpoint", lambda name: tmp_path / "snap")
    assert teacher.teacher_paths("textattack/bert-base-uncased-SST-2", "hs") == (
        tmp_path / "snap",
        None,
    )
    with pytest.raises(FileNotFoundError, match="fine-tune the teacher first"):
        teacher.teacher_paths(str(tmp_path / "missing" / "run"), "hs")
    fine_tuned = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a"}}
    assert teacher_head_problem(fine_tuned, "classification") is None
    msg = teacher_head_problem({"architectures": ["BertForMaskedLM"]}, "classification")
    assert "without a classification head" in msg and "kdjax teacher" in msg
    assert "has no token_classification head" in teacher_head_problem(HF, "token_classification")


def test_old_key_names_map_and_pretraining_heads_are_dropped():
    from kdjax.models.hf import _normalise_keys

    w = {
        "bert.embeddings.LayerNorm.gamma": 1,
        "bert.encoder.layer.0.output.LayerNorm.beta": 2,
        "bert.pooler.dense.weight": 3,
        "cls.predictions.bias": 4,
        "cls.seq_relationship.weight": 5,
    }
    assert _normalise_keys(w, "bert") == {
        "embeddings.LayerNorm.weight": 1,
        "encoder.layer.0.output.LayerNorm.bias": 2,
        "pooler.dense.weight": 3,
    }
