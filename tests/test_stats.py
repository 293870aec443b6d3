"""Parameter / FLOP accounting: SPS saves parameters, not compute."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from dist_peakd.models import (
    SPSBertConfig,
    SPSBertForSequenceClassification,
    count_parameters,
    flops_per_token,
    model_stats,
)

TINY = dict(vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def _bert(layers: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(**TINY, num_hidden_layers=layers))


def _student(k: int, variant: str) -> SPSBertForSequenceClassification:
    return SPSBertForSequenceClassification(SPSBertConfig(**TINY, num_hidden_layers=k, sps_variant=variant))


def test_flops_formula() -> None:
    h, i, s = 768, 3072, 128
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * s * h
    assert flops_per_token(h, i, 12, s, num_heads=12) == 12 * per_layer
    assert flops_per_token(h, i, 6, s) == flops_per_token(h, i, 6, s, num_heads=1)
    with pytest.raises(ValueError):
        flops_per_token(h, i, 1, s, num_heads=7)


def test_sps_student_has_k_layer_parameters_and_2k_layer_flops() -> None:
    student = model_stats(_student(3, "shuffle"), seq_len=64)
    plain3 = model_stats(_bert(3), seq_len=64)
    plain6 = model_stats(_bert(6), seq_len=64)
    assert student["parameters"] == plain3["parameters"]
    assert student["encoder_parameters"] == plain3["encoder_parameters"]
    assert student["num_parameter_layers"] == 3 and student["num_effective_layers"] == 6
    assert student["flops_per_token"] == plain6["flops_per_token"]
    assert student["forward_gflops_per_sequence"] == pytest.approx(plain6["flops_per_token"] * 64 / 1e9)
    assert model_stats(_student(3, "none"), seq_len=64)["flops_per_token"] == plain3["flops_per_token"]
    assert model_stats(_student(6, "share"))["num_effective_layers"] == 9


def test_parameter_counts() -> None:
    model = _bert(2)
    layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    stats = model_stats(model)
    assert stats["encoder_parameters"] == 2 * layer
    assert stats["parameters"] == count_parameters(model) == sum(p.numel() for p in model.parameters())
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert count_parameters(model, trainable_only=True) == stats["parameters"] - frozen
    # A tensor used twice is counted once.
    shared = torch.nn.Linear(4, 4)
    assert count_parameters(torch.nn.Sequential(shared, shared)) == 20
