"""Issue 27 item 7, the model card a new user reads: the teacher by name and fingerprint (not a path), a
``--max_eval_examples`` run's metrics labelled as a subset (body and Hub metadata), latency with its
machine and threads, and a Limitations section (trivial baseline, teacher's gain kept, class skew),
checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from dist_peakd.data import get_task
from dist_peakd.export import render_model_card
from dist_peakd.export.card import parse_card_metadata
from dist_peakd.export.card_limits import cpu_name, gain_kept, machine_description
from dist_peakd.metrics import prediction_profile
from dist_peakd.stages.cards import eval_subset, task_card_info

FP = "ab12cd34ef56ab78" + "0" * 48
METHOD = {"kind": "student", "teacher": "dist-peakd-mrpc-teacher-best", "teacher_fingerprint": FP,
          "teacher_base_model": "sentence-transformers/all-MiniLM-L6-v2", "k": 2, "variant": "shuffle",
          "num_effective_layers": 4, "schedule": [[0, False], [1, False], [0, True], [1, True]], "ptp": True}
# 10 MRPC dev rows: gold 0,0,0,0,1,1,1,1,1,1 (majority: equivalent, 6/10); the model predicts 1 on 8 rows
GOLD = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PRED = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])


def _card(**kw) -> str:
    profile = prediction_profile("mrpc", PRED, GOLD)
    args = dict(name="s", task=task_card_info(get_task("mrpc"), {"rows": 10, "of": 408}),
                dev_metrics={"final": {"accuracy": 0.8, "f1": 0.8571}, "teacher": {"accuracy": 0.7, "f1": 0.8}},
                method=METHOD, stats={"parameters": 10}, command="dist-peakd distill", options={},
                eval_rows={"rows": 10, "of": 408}, limitations={**profile, "main_metric": "accuracy"},
                latency=[{"model": "student", "median_ms": 1.5, **machine_description("cpu")}], versions={})
    args.update(kw)
    return render_model_card(**args)


def test_prediction_profile_is_the_hand_computed_one():
    profile = prediction_profile("mrpc", PRED, GOLD)
    assert profile["rows"] == 10
    assert profile["baseline"]["rule"] == "majority" and profile["baseline"]["class"] == "equivalent"
    # always "equivalent": accuracy 6/10, F1 of class 1 = 2*6/(2*6+4) = 0.75
    assert profile["baseline"]["metrics"]["accuracy"] == pytest.approx(0.6)
    assert profile["baseline"]["metrics"]["f1"] == pytest.approx(0.75)
    assert profile["gold_share"] == {"not_equivalent": 0.4, "equivalent": 0.6}
    assert profile["predicted_share"] == {"not_equivalent": 0.2, "equivalent": 0.8}
    reg = prediction_profile("stsb", np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert reg["baseline"]["value"] == pytest.approx(2.0) and reg["baseline"]["metrics"]["pearson"] == 0.0
    assert reg["predictions"]["mean"] == pytest.approx(7 / 3) and reg["gold"]["std"] == pytest.approx(np.std([1, 2, 3]))
    assert gain_kept(0.75, 0.6, 0.8) == pytest.approx(0.75) and gain_kept(0.7, 0.6, 0.6) is None


def test_card_names_the_teacher_by_identity_not_a_path():
    card = _card()
    assert "distilled from the teacher `dist-peakd-mrpc-teacher-best` (fine-tuned from " \
           "`sentence-transformers/all-MiniLM-L6-v2`; fingerprint `sha256:ab12cd34ef56ab78` of its config.json and weights) " \
           "with" in card


def test_subset_metrics_are_labelled_as_a_subset_in_body_and_metadata():
    card = _card()
    assert "## Dev metrics (dev subset: first 10 of 408 rows)" in card
    dataset = parse_card_metadata(card)["model-index"][0]["results"][0]["dataset"]
    assert dataset["split"] == "validation[:10]" and dataset["name"] == "GLUE MRPC (dev subset: first 10 of 408 rows)"
    assert eval_subset((10, 408)) == {"rows": 10, "of": 408}
    assert eval_subset((408, 408)) is None and eval_subset((10, None)) is None
    full = parse_card_metadata(_card(task=task_card_info(get_task("mrpc")), eval_rows=None))
    assert full["model-index"][0]["results"][0]["dataset"]["split"] == "validation"


def test_limitations_section_has_baseline_gain_kept_and_class_skew():
    card = _card(dev_metrics={"final": {"accuracy": 0.7, "f1": 0.8}, "teacher": {"accuracy": 0.8, "f1": 0.85}})
    section = card[card.index("## Limitations"):card.index("## How to load")]
    assert ("on the same 10 dev rows (the first 10 of 408; always the most frequent gold class of those rows, "
            "`equivalent`): f1 0.7500, accuracy 0.6000") in section
    assert "This model: accuracy 0.7000" in section
    assert "keeps **50.0%** of the teacher's gain over the baseline" in section  # (0.7 - 0.6) / (0.8 - 0.6)
    assert "| not_equivalent | 0.2000 | 0.4000 |" in section and "| equivalent | 0.8000 | 0.6000 |" in section
    assert "first 10 of 408 dev rows" in section
    assert "## Limitations" not in _card(limitations=None)
    weak = _card(dev_metrics={"final": {"accuracy": 0.7, "f1": 0.8}, "teacher": {"accuracy": 0.6, "f1": 0.75}})
    assert "The teacher scores accuracy 0.6000, no better than the baseline" in weak and "keeps **" not in weak


def test_latency_names_the_machine_and_threads():
    import torch

    card = _card()
    section = card[card.index("## Measured latency"):card.index("## Limitations")]
    assert "| machine | threads |" in section.replace("| model | median_ms ", "")
    assert cpu_name() in section and f"| {torch.get_num_threads()} |" in section
    old = _card(latency=[{"model": "student", "median_ms": 1.5}])
    assert "The machine and thread count of these figures were not recorded." in old
