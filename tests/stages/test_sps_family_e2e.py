"""A non-BERT backbone end to end through the CLI (issue 23 item 2): a tiny random RoBERTa is fine-tuned,
cached, and its own SPS student (``sps-family``: the RoBERTa classifier run twice by weight tying, Q/K
swapped in the second pass) is PTP-pretrained and distilled with KD + Patient-KD on a GLUE slice; the
student folders reload, evaluate and export (plain: a standard ``roberta`` folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliab_helpers import cli, slice_opts


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory, minilm_path) -> Path:
    """A seeded 4-layer, 32-wide random RoBERTa (pretrained-backbone layout) with the MiniLM tokenizer (a
    WordPiece vocabulary: pad id 0 and two token types, which the config follows)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    out = tmp_path_factory.mktemp("tiny_roberta")
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    cfg = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, type_vocab_size=2, pad_token_id=0)
    torch.manual_seed(0)
    RobertaModel(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_roberta_backbone_ptp_and_distill_through_the_cli(tiny_roberta, glue_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from dist_peakd.models import SPSFamilyForSequenceClassification, load_student

    out = tmp_path / "run"
    opts = slice_opts(out, tiny_roberta, glue_dir)
    for stage in ("finetune-teacher", "cache-teacher", "ptp", "distill"):
        code, err = cli(stage, dict(opts, k=2) if stage in ("ptp", "distill") else opts, capsys)
        assert code == 0, f"{stage}: {err[-2000:]}"
    ptp = out / "mrpc" / "ptp-k2-shuffle" / "best"
    ptp_config = json.loads((ptp / "config.json").read_text())
    assert ptp_config["model_type"] == "sps-family" and ptp_config["base_model_type"] == "roberta"
    assert len(ptp_config["id2label"]) == 4  # the 4 PTP classes
    stage = next((out / "mrpc").glob("distill-k2-shuffle-ptp-*"))
    summary = json.loads((stage / "summary.json").read_text())
    stats = summary["model_stats"]
    assert (stats["num_parameter_layers"], stats["num_effective_layers"]) == (2, 4)
    assert [list(p) for p in summary["layer_map"]] == [[1, 1], [2, 2], [3, 3]]  # E=4, a 4-layer teacher
    final = stage / "final"
    assert {"modeling_sps_family.py", "configuration_sps_family.py"} <= {p.name for p in final.glob("*.py")}
    assert "`roberta`" in (final / "README.md").read_text()
    student = load_student(final, require_head=True)
    assert type(student) is SPSFamilyForSequenceClassification and student.config.base_model_type == "roberta"
    assert student.config.sps_schedule == [[0, False], [1, False], [0, True], [1, True]]

    code, err = cli("evaluate", {"model_dir": str(final), "glue_dir": str(glue_dir), "max_eval_examples": 16,
                                 "cache_dir": str(tmp_path / "tok")}, capsys)
    assert code == 0, err[-2000:]
    plain = tmp_path / "plain"
    code, err = cli("export", {"model_dir": str(final), "out": str(plain), "format": "plain"}, capsys)
    assert code == 0, err[-2000:]
    config = json.loads((plain / "config.json").read_text())
    assert config["model_type"] == "roberta" and config["num_hidden_layers"] == 4 and not list(plain.glob("*.py"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(plain)).eval()
    ids = torch.randint(1000, 2000, (2, 10))
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        assert (reloaded(**feed).logits - student.eval()(**feed).logits).abs().max().item() <= 1e-5
