"""The encoder against transformers' PyTorch models: real MiniLM weights and tiny random ones."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import require

torch = require("torch")  # reference outputs; part of kdjax[test]: fails, never skips, there
transformers = require("transformers")

from flax import nnx  # noqa: E402

from kdjax.models import (  # noqa: E402
    Model,
    from_pretrained,
    from_teacher_layers,
    random_student,
    save_pretrained,
)
from kdjax.models.config import EncoderConfig  # noqa: E402

AUTO = {
    "classification": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
    "extractive_qa": transformers.AutoModelForQuestionAnswering,
}


def _batch(vocab, pad_id, rng, batch=3, seq=11):
    ids = rng.integers(5, vocab, size=(batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, 7:] = 0  # padding inside the batch
    mask[2, 4:] = 0
    ids[mask == 0] = pad_id
    types = np.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def _torch_logits(hf_model, ids, mask, types, task):
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        )
    if task == "extractive_qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
    return out.logits.numpy()


def test_minilm_matches_pytorch_bert(minilm_path):
    """Real all-MiniLM-L6-v2 weights: last hidden state vs transformers BertModel."""
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    texts = ["a great movie!", "the worst film i have ever seen, truly dreadful and far too long"]
    b = tok(texts, padding=True, return_tensors="np")
    model = from_pretrained(minilm_path, "classification", num_labels=2)
    ours = model.encoder(
        jnp.asarray(b["input_ids"]),
        jnp.asarray(b["attention_mask"]),
        jnp.asarray(b["token_type_ids"]),
    )
    ref = transformers.BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        theirs = ref(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state.numpy()
    real = b["attention_mask"].astype(bool)
    assert real.sum() < real.size  # the batch really has padding
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4, rtol=0)


TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def _tiny_hf_config(model_type, task="classification"):
    extra = {"embedding_size": 16} if model_type == "electra" else {}
    # transformers' QA heads have num_labels outputs, split into start and end: 2.
    labels = 2 if task == "extractive_qa" else 3
    return transformers.AutoConfig.for_model(model_type, **TINY, **extra, num_labels=labels)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
@pytest.mark.parametrize("task", ["classification", "token_classification", "extractive_qa"])
def test_load_transformers_checkpoint(tmp_path, model_type, task):
    """A PyTorch checkpoint (with its head) loads into kdjax with the same logits."""
    torch.manual_seed(0)
    ref = AUTO[task].from_config(_tiny_hf_config(model_type, task)).eval()
    ref.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, task)
    assert model.num_labels == (2 if task == "extractive_qa" else 3)
    ids, mask, types = _batch(99, ref.config.pad_token_id, np.random.default_rng(0))
    if model_type == "roberta":
        types = np.zeros_like(types)
    ours = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    theirs = _torch_logits(ref, ids, mask, types, task)
    sel = mask.astype(bool) if task != "classification" else slice(None)
    np.testing.assert_allclose(np.asarray(ours)[sel], theirs[sel], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
@pytest.mark.parametrize("task", ["classification", "token_classification", "extractive_qa"])
def test_save_pretrained_loads_in_transformers(tmp_path, model_type, task):
    """kdjax -> HF directory -> transformers AutoModelFor...: same logits to 1e-4."""
    pad = 1 if model_type == "roberta" else 0
    cfg = EncoderConfig(
        model_type=model_type,
        vocab_size=99,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=1 if model_type == "roberta" else 2,
        pad_token_id=pad,
        embedding_size=16 if model_type == "electra" else None,  # ELECTRA's projection
    )
    labels = None if task == "extractive_qa" else ["neg", "neu", "pos"]
    model = Model(cfg, task, labels=labels, rngs=nnx.Rngs(1))
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    ref = AUTO[task].from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == cfg["architectures"][0]
    if task != "extractive_qa":
        assert ref.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    ids, mask, types = _batch(99, pad, np.random.default_rng(1))
    if model_type == "roberta":
        types = np.zeros_like(types)
    ours = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    theirs = _torch_logits(ref, ids, mask, types, task)
    sel = mask.astype(bool) if task != "classification" else slice(None)
    np.testing.assert_allclose(np.asarray(ours)[sel], theirs[sel], atol=1e-4, rtol=0)
    # And back into kdjax, bit for bit.
    again = from_pretrained(tmp_path, task)
    np.testing.assert_array_equal(
        np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))),
        np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))),
    )


def test_student_from_teacher_layers(minilm_path):
    teacher = from_pretrained(minilm_path, "classification", num_labels=2)
    student = from_teacher_layers(teacher, "classification", [0, 2, 4])
    assert student.cfg.num_layers == 3
    for i, j in enumerate([0, 2, 4]):
        np.testing.assert_array_equal(
            student.encoder.layers[i].query.kernel[...], teacher.encoder.layers[j].query.kernel[...]
        )
    np.testing.assert_array_equal(
        student.encoder.embeddings.word_embeddings.embedding[...],
        teacher.encoder.embeddings.word_embeddings.embedding[...],
    )
    with pytest.raises(ValueError, match=r"layers: must be distinct indices in \[0, 6\)"):
        from_teacher_layers(teacher, "classification", [0, 6])


def test_random_student_size():
    m = random_student("token_classification", 5, layers=2, hidden=64, heads=4, intermediate=128)
    ids = jnp.ones((2, 8), jnp.int32)
    assert m(ids, jnp.ones_like(ids)).shape == (2, 8, 5)
    assert len(m.encoder.layers) == 2 and m.encoder.layers[0].query.kernel[...].shape == (64, 64)


def test_bad_checkpoints(tmp_path, minilm_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path, "classification", 2)
    with pytest.raises(ValueError, match="task: unknown value 'ner'"):
        from_pretrained(minilm_path, "ner", 2)
    # A checkpoint whose tensors have the wrong shape for its config.
    cfg = json.loads((minilm_path / "config.json").read_text())
    cfg["hidden_size"], cfg["num_attention_heads"] = 192, 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(minilm_path / "model.safetensors")
    with pytest.raises(ValueError, match="has shape .* but the model expects"):
        from_pretrained(tmp_path, "classification", 2)


def test_pytorch_bin_needs_torch_or_converts(tmp_path):
    ref = transformers.AutoModelForSequenceClassification.from_config(_tiny_hf_config("bert"))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ref.config.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, "classification")
    assert model.num_labels == 3


def test_head_label_count_mismatch(tmp_path):
    ref = transformers.AutoModelForSequenceClassification.from_config(_tiny_hf_config("bert"))
    ref.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="head has 3 outputs but num_labels=2"):
        from_pretrained(tmp_path, "classification", 2)
    assert from_pretrained(tmp_path, "classification", 2, reinit_head=True).num_labels == 2
