"""Parameter / FLOP accounting: SPS saves parameters, not compute."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

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


def _measured_flops(model: torch.nn.Module, seq_len: int) -> int:
    """FLOPs of one forward pass of one sequence, counted by torch's own matmul FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, TINY["vocab_size"], (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


def test_flops_per_token_golden_value_by_hand() -> None:
    # H=32, I=64, S=8: per layer 2*(4*32*32 + 2*32*64) + 2*2*8*32 = 2*(4096 + 4096) + 1024 = 17408
    assert flops_per_token(32, 64, 2, 8) == 34816.0
    assert flops_per_token(32, 64, 2, 8, num_heads=4) == 34816.0  # the head split does not change the count
    with pytest.raises(ValueError):
        flops_per_token(32, 64, 1, 8, num_heads=7)


def test_flops_per_token_equals_torch_flop_counter_on_a_tiny_encoder() -> None:
    """An independent count: torch.utils.flop_counter over the encoder of a 2-layer BERT (eager attention,
    so the score matmuls are counted too), divided by the tokens."""
    seq = 8
    encoder_only = BertModel(BertConfig(**TINY, num_hidden_layers=2, attn_implementation="eager"),
                             add_pooling_layer=False)
    measured = _measured_flops(encoder_only, seq)
    assert measured / seq == model_stats(_bert(2), seq_len=seq)["flops_per_token"] == 34816.0


def test_sps_student_runs_2k_layers_of_flops_by_the_counter() -> None:
    """A k=2 SPS student measured with the FLOP counter: its encoder costs 4 layers (each layer runs twice);
    the rest of the count is the pooler and the classifier, run once per sequence."""
    seq, hidden = 8, TINY["hidden_size"]
    student = SPSBertForSequenceClassification(SPSBertConfig(**TINY, num_hidden_layers=2, sps_variant="shuffle",
                                                             attn_implementation="eager"))
    per_sequence_head = 2 * hidden * hidden + 2 * hidden * student.config.num_labels  # pooler + classifier
    encoder = _measured_flops(student, seq) - per_sequence_head
    assert encoder == model_stats(student, seq_len=seq)["flops_per_token"] * seq == 2 * 34816 * seq  # 4 layers


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
