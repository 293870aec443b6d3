"""End to end: the pipeline on slices of real MRPC, the distillation ablations, teacher-free distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_peakd.config import build_options
from dist_peakd.engine import ConfigError
from dist_peakd.stages import distill
from dist_peakd.stages.pipeline import PipelineOptions
from dist_peakd.stages.pipeline import run as run_pipeline

pytestmark = pytest.mark.slow

SLICE = dict(task="mrpc", max_length=40, max_train_examples=48, max_eval_examples=32, batch_size=16,
             eval_batch_size=32, log_every_steps=1, seed=0)


def _pipeline_opts(out: Path, backbone: str, glue_dir: Path, **kw) -> PipelineOptions:
    values = dict(SLICE, output_dir=str(out), glue_dir=str(glue_dir), backbone=backbone,
                  cache_dir=str(out / "tok"), teacher_epochs=1, ptp_epochs=1, epochs=1, k=2,
                  teacher_lr=1e-3, ptp_lr=1e-3, lr=1e-3, latency_repeats=2)
    values.update(kw)
    return build_options(PipelineOptions, **values)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory, tiny_bert, glue_dir):
    out = tmp_path_factory.mktemp("pipe")
    result = run_pipeline(_pipeline_opts(out, str(tiny_bert), glue_dir))
    return out, result


def test_pipeline_writes_summary_with_sane_values(tiny_pipeline):
    out, result = tiny_pipeline
    task_dir = out / "mrpc"
    summary = json.loads((task_dir / "pipeline_summary.json").read_text())
    md = (task_dir / "pipeline_summary.md").read_text()
    assert summary == json.loads(json.dumps(result))
    teacher, student = summary["rows"]
    assert teacher["model"] == "teacher" and student["model"] == "student"
    for row in summary["rows"]:
        for which in ("final", "best"):
            assert 0.0 <= row[which]["accuracy"] <= 1.0 and 0.0 <= row[which]["f1"] <= 1.0
        assert row["latency_ms"] > 0
    # tiny teacher: 4 layers; student k=2 shuffle: 2 parameter layers, 4 effective
    assert (teacher["num_parameter_layers"], teacher["num_effective_layers"]) == (4, 4)
    assert (student["num_parameter_layers"], student["num_effective_layers"]) == (2, 4)
    assert student["parameters"] < teacher["parameters"]
    assert student["flops_per_token"] == pytest.approx(teacher["flops_per_token"])  # same compute: 4 layers
    assert "| teacher |" in md and "| student |" in md
    for stage in ("teacher", "teacher_cache", "ptp-k2-shuffle"):
        assert (task_dir / stage).is_dir(), stage
    ptp_summary = json.loads((task_dir / "ptp-k2-shuffle" / "summary.json").read_text())
    assert sum(ptp_summary["histogram"]["train"].values()) == 48
    assert ptp_summary["best"]["ptp_loss"] == min(h["ptp_loss"] for h in ptp_summary["history"])


def test_pipeline_rerun_reuses_every_stage(tiny_pipeline, tiny_bert, glue_dir):
    out, first = tiny_pipeline
    again = run_pipeline(_pipeline_opts(out, str(tiny_bert), glue_dir))
    assert all("reused" in line for line in again["stages"]), again["stages"]
    assert again["rows"][1]["final"] == first["rows"][1]["final"]


def test_pipeline_refuses_a_stage_made_with_other_options(tiny_pipeline, tiny_bert, glue_dir):
    out, _ = tiny_pipeline
    with pytest.raises(ConfigError, match=r"teacher was made with other options \(epochs: 1(\.0)? -> 2"):
        run_pipeline(_pipeline_opts(out, str(tiny_bert), glue_dir, teacher_epochs=2))


def test_distillation_never_instantiates_the_teacher(tiny_pipeline, tiny_bert, glue_dir, monkeypatch):
    import transformers

    out, _ = tiny_pipeline

    def forbidden(*a, **k):
        raise AssertionError("the teacher model was instantiated during distillation")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.BertForSequenceClassification, "__init__", forbidden)
    monkeypatch.setattr("dist_peakd.models.teacher.load_teacher", forbidden)
    opts = build_options(distill.DistillOptions, **SLICE, output_dir=str(out), glue_dir=str(glue_dir),
                         backbone=str(tiny_bert), cache_dir=str(out / "tok"), k=2, epochs=1, lr=1e-3,
                         run_name="no-teacher-check")
    summary = distill.run(opts)
    assert summary["layer_map"] == [[1, 1], [2, 2], [3, 3]] or summary["layer_map"] == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("ablation, expect", [
    (dict(alpha=0.0, beta=0.0, use_ptp=False, variant="none"), dict(effective=2, weights={"kd": 0.0, "ce": 1.0, "pt": 0.0})),
    (dict(beta=0.0, use_ptp=False, variant="none"), dict(effective=2, weights={"kd": 0.7, "ce": 0.3, "pt": 0.0})),
    (dict(use_ptp=False, variant="none"), dict(effective=2, weights={"kd": 0.7, "ce": 0.3, "pt": 100.0})),
    (dict(use_ptp=False, variant="share"), dict(effective=4, weights={"kd": 0.7, "ce": 0.3, "pt": 100.0})),
    (dict(use_ptp=False, variant="shuffle", k=1), dict(effective=2, weights={"kd": 0.7, "ce": 0.3, "pt": 100.0})),
    (dict(use_ptp=True, variant="shuffle"), dict(effective=4, weights={"kd": 0.7, "ce": 0.3, "pt": 100.0})),
])
def test_ablations_are_options_of_distill(tiny_pipeline, tiny_bert, glue_dir, ablation, expect):
    out, _ = tiny_pipeline
    values = dict(SLICE, output_dir=str(out), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                  cache_dir=str(out / "tok"), k=2, epochs=1, lr=1e-3)
    values.update(ablation)
    summary = distill.run(build_options(distill.DistillOptions, **values))
    assert summary["model_stats"]["num_effective_layers"] == expect["effective"]
    assert summary["loss_weights"] == pytest.approx(expect["weights"])
    log = [json.loads(x) for x in (Path(summary["stage_dir"]) / "train_log.jsonl").read_text().splitlines()]
    if expect["weights"]["pt"] == 0:
        assert all(r["train/pt"] == 0 for r in log)
    else:
        assert all(r["train/pt"] > 0 for r in log)


def test_bad_distill_options_are_refused(tmp_path):
    for bad, msg in ((dict(temperature=0), "option temperature"), (dict(alpha=1.5), "option alpha"),
                     (dict(beta=-1), "option beta"), (dict(variant="mirror"), "option variant"),
                     (dict(k=0), "option k"), (dict(unknown_thing=1), "unknown option")):
        with pytest.raises(ConfigError, match=msg):
            build_options(distill.DistillOptions, output_dir=str(tmp_path), **bad)


def test_k_larger_than_backbone_is_refused(tmp_path, tiny_bert, glue_dir):
    opts = build_options(distill.DistillOptions, **SLICE, output_dir=str(tmp_path), glue_dir=str(glue_dir),
                         backbone=str(tiny_bert), k=7)
    with pytest.raises(ConfigError, match="option k: student depth 7 exceeds the backbone's 4 layers"):
        distill.run(opts)


def test_pipeline_on_real_minilm_slice(tmp_path, glue_dir):
    """The embedded backbone end to end on 48 MRPC examples (one real run of every stage)."""
    result = run_pipeline(_pipeline_opts(tmp_path, "minilm", glue_dir, k=3, lr=5e-5, teacher_lr=5e-5,
                                         ptp_lr=5e-5))
    teacher, student = result["rows"]
    assert teacher["num_parameter_layers"] == 6 and student["num_effective_layers"] == 6
    assert 20_000_000 < teacher["parameters"] < 24_000_000
    assert student["parameters"] < teacher["parameters"]
    assert 0.0 < teacher["final"]["f1"] <= 1.0
