"""Teacher loading (BERT family only) and its forward returning logits + per-layer [CLS] states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, RobertaConfig, RobertaModel

from dist_peakd.models import (
    BERT_FAMILY,
    ClassifierOutput,
    ModelConfigError,
    check_bert_family,
    load_teacher,
    teacher_forward,
)


def _inputs(vocab: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def test_teacher_forward_returns_logits_and_cls_per_layer(tiny_bert: Path) -> None:
    torch.manual_seed(0)
    teacher = load_teacher(str(tiny_bert), num_labels=3).eval()
    ids, mask = _inputs()
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        out = teacher_forward(teacher, ids, mask, tt)
        ref = teacher(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.logits, ref.logits)
    assert len(out.cls_states) == teacher.config.num_hidden_layers == 4
    for cls, hidden in zip(out.cls_states, ref.hidden_states[1:], strict=True):
        assert cls.shape == (3, 32)
        torch.testing.assert_close(cls, hidden[:, 0])
    with torch.no_grad():
        torch.testing.assert_close(teacher_forward(teacher, ids, mask).logits, out.logits)


def test_finetuned_teacher_folder_keeps_head(tiny_bert: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    teacher = load_teacher(tiny_bert, num_labels=2)
    assert teacher.config.problem_type != "regression"
    teacher.save_pretrained(tmp_path)
    again = load_teacher(tmp_path, num_labels=2)
    for (name, a), b in zip(teacher.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert next(again.parameters()).dtype == torch.float32


def test_regression_teacher(tiny_bert: Path) -> None:
    teacher = load_teacher(tiny_bert, num_labels=1)
    assert teacher.config.problem_type == "regression"
    assert teacher.classifier.out_features == 1


def test_roberta_family_is_accepted(tmp_path: Path) -> None:
    cfg = RobertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    RobertaModel(cfg).save_pretrained(tmp_path)
    assert check_bert_family(tmp_path).model_type == "roberta"
    teacher = load_teacher(tmp_path, num_labels=2, attn_implementation="eager").eval()
    ids, mask = _inputs()
    with torch.no_grad():
        out = teacher_forward(teacher, ids, mask)
    assert out.logits.shape == (3, 2) and len(out.cls_states) == 2


def test_non_bert_checkpoint_is_rejected(tmp_path: Path, tiny_bert: Path) -> None:
    assert check_bert_family(tiny_bert).model_type == "bert"
    GPT2Config(n_layer=2, n_embd=32, n_head=4).save_pretrained(tmp_path)
    for call in (lambda: check_bert_family(tmp_path), lambda: load_teacher(str(tmp_path), num_labels=2)):
        with pytest.raises(ModelConfigError) as err:
            call()
        msg = str(err.value)
        assert str(tmp_path) in msg and "gpt2" in msg
        assert all(t in msg for t in BERT_FAMILY)
