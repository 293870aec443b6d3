"""Plain (unrolled) export: an SPS student as a standard BERT of its effective layers; stats; teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from dist_peakd.export import CODE_FILES, export_plain, unroll_student
from dist_peakd.models import SPSBertConfig, SPSBertForSequenceClassification, model_stats

TINY = dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _student(k: int, variant: str, seed: int = 0, num_labels: int = 3) -> SPSBertForSequenceClassification:
    torch.manual_seed(seed)
    # initializer_range 0.3: peaked attention, so swapping query and key changes the logits clearly
    cfg = SPSBertConfig(**TINY, num_hidden_layers=k, sps_variant=variant, num_labels=num_labels,
                        initializer_range=0.3)
    model = SPSBertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # non-zero biases: the swap must move the bias too
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.bias.normal_(0, 0.5)
            layer.attention.self.key.bias.normal_(0, 0.5)
    return model


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize("variant", ["share", "shuffle", "none"])
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_plain_export_equals_compact(tmp_path: Path, k: int, variant: str) -> None:
    student = _student(k, variant)
    out = export_plain(student, tmp_path / "plain", label_names=["a", "b", "c"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "bert" and "auto_map" not in cfg and "sps_schedule" not in cfg
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["num_hidden_layers"] == student.num_effective_layers
    assert cfg["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert not any((out / name).exists() for name in CODE_FILES)
    plain = BertForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    batch = _batch()
    with torch.no_grad():
        want = student(**batch)
        got = plain(**batch, output_hidden_states=True)
    assert (got.logits - want.logits).abs().max().item() <= 1e-5
    for h, c in zip(got.hidden_states[1:], want.cls_states, strict=True):
        assert (h[:, 0] - c).abs().max().item() <= 1e-5


def test_swap_is_what_makes_the_plain_copy_equal(tmp_path: Path) -> None:
    """Unrolling a shuffle student *without* swapping query/key gives other logits (the test can fail)."""
    student = _student(2, "shuffle")
    plain = unroll_student(student)
    for j in (2, 3):  # undo the swap in the second-pass copies
        attn = plain.bert.encoder.layer[j].attention.self
        attn.query, attn.key = attn.key, attn.query
    batch = _batch()
    with torch.no_grad():
        assert (plain(**batch).logits - student(**batch).logits).abs().max().item() > 1e-3


def test_unrolled_has_same_flops_and_e_layers_of_weights(tmp_path: Path) -> None:
    student = _student(3, "shuffle")
    plain = unroll_student(student)
    s_stats, p_stats = model_stats(student, seq_len=64), model_stats(plain, seq_len=64)
    assert s_stats["flops_per_token"] == p_stats["flops_per_token"]
    assert s_stats["num_effective_layers"] == p_stats["num_effective_layers"] == 6
    assert p_stats["num_parameter_layers"] == 6 and s_stats["num_parameter_layers"] == 3
    layer = sum(p.numel() for p in student.bert.encoder.layer[0].parameters())
    assert p_stats["parameters"] - s_stats["parameters"] == 3 * layer
    # On disk: E layers of weights instead of k, the rest (embeddings, pooler, head) is identical.
    compact_dir, plain_dir = tmp_path / "c", tmp_path / "p"
    student.save_pretrained(str(compact_dir))
    export_plain(student, plain_dir)
    grown = (plain_dir / "model.safetensors").stat().st_size - (compact_dir / "model.safetensors").stat().st_size
    assert 0 <= grown - 3 * layer * 4 < 8192  # fp32 weights of 3 more layers + their safetensors header entries


def test_stats_of_remote_code_class_use_the_schedule() -> None:
    """model_stats reads the schedule from the config (a trust_remote_code class is not the package's)."""

    class Remote(torch.nn.Module):
        def __init__(self, config: SPSBertConfig) -> None:
            super().__init__()
            self.config = config
            self.w = torch.nn.Linear(2, 2)

    stats = model_stats(Remote(SPSBertConfig(**TINY, num_hidden_layers=2, sps_variant="shuffle")))
    assert stats["num_effective_layers"] == 4 and stats["num_parameter_layers"] == 2


def test_teacher_exports_as_itself(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**TINY, num_hidden_layers=3, num_labels=2)).eval()
    out = export_plain(teacher, tmp_path / "teacher", label_names=["negative", "positive"])
    again = BertForSequenceClassification.from_pretrained(str(out)).eval()
    assert again.config.num_hidden_layers == 3 and again.config.id2label == {0: "negative", 1: "positive"}
    assert teacher.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # the caller's model is not modified
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, teacher(**batch).logits, atol=0, rtol=0)
