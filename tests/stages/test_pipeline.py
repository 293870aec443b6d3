"""End to end: the pipeline on slices of real MRPC, the distillation ablations, teacher-free distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliab_helpers import for_stage

from dist_peakd.config import build_options
from dist_peakd.engine import ConfigError
from dist_peakd.metrics import gain_kept
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
    # the trivial baseline of the same 32 dev rows (20 "equivalent"): always 1 -> F1 40/52, accuracy 20/32
    base = summary["baseline"]
    assert (base["rule"], base["class"], base["rows"], base["main_metric"]) == ("majority", "equivalent", 32, "f1")
    assert base["metrics"] == {"f1": pytest.approx(40 / 52), "accuracy": pytest.approx(0.625)}
    kept = gain_kept(student["final"]["f1"], 40 / 52, teacher["final"]["f1"])
    assert base["gain_kept"] == (None if kept is None else pytest.approx(kept))
    assert "| trivial baseline (majority: equivalent) | 76.92 | 62.50 | 76.92 | 62.50 | 0 | - | - | - |" in md
    assert ("student keeps" in md) if kept is not None else ("the teacher does not beat the trivial baseline" in md)
    for stage_summary in (json.loads((Path(student_dir) / "summary.json").read_text())
                          for student_dir in (task_dir / "teacher", Path(summary["student_dir"]).parent)):
        block = stage_summary["baseline"]
        assert block["metrics"] == base["metrics"] and block["model"] == stage_summary["final"]["f1"]
        below = [w for w in stage_summary["metric_warnings"] if "at or below the trivial baseline" in w]
        assert len(below) == int(block["at_or_below"])
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
    from dist_peakd.models import load_teacher

    with pytest.raises(AssertionError, match="teacher model was instantiated"):  # the patches do bite
        load_teacher(out / "mrpc" / "teacher" / "best", num_labels=2)
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


def test_cache_written_with_teacher_cache_dir_is_the_one_the_students_read(tiny_pipeline, tiny_bert, glue_dir,
                                                                         tmp_path):
    """cache-teacher --teacher_cache_dir writes there (not <task>/teacher_cache), and ptp/distill given the same
    folder read it; without it they look in the default place (here: another cache)."""
    from dist_peakd.stages import cache_teacher, ptp
    from dist_peakd.stages.cache_teacher import CacheTeacherOptions

    out, _ = tiny_pipeline
    elsewhere = tmp_path / "my_cache"
    common = dict(SLICE, output_dir=str(out), glue_dir=str(glue_dir), backbone=str(tiny_bert),
                  cache_dir=str(out / "tok"), teacher_cache_dir=str(elsewhere))
    default_manifest = (out / "mrpc" / "teacher_cache" / "manifest.json").stat().st_mtime_ns
    summary = cache_teacher.run(build_options(CacheTeacherOptions, **for_stage("cache-teacher", common)))
    assert summary["cache_dir"] == str(elsewhere) and not summary["skipped"]
    assert (elsewhere / "manifest.json").is_file()
    assert (out / "mrpc" / "teacher_cache" / "manifest.json").stat().st_mtime_ns == default_manifest
    # mark the new cache so a reader of it can be told apart from a reader of the default one
    manifest = json.loads((elsewhere / "manifest.json").read_text())
    manifest["teacher_dev_metrics"] = {"f1": 0.123, "accuracy": 0.456}
    (elsewhere / "manifest.json").write_text(json.dumps(manifest))
    student = distill.run(build_options(distill.DistillOptions, **common, k=2, epochs=1, lr=1e-3, use_ptp=False,
                                        run_name="reads-my-cache"))
    assert student["teacher_dev_metrics"] == {"f1": 0.123, "accuracy": 0.456}
    ptp_summary = ptp.run(build_options(ptp.PTPOptions, **dict(common, output_dir=str(tmp_path / "ptp_out")),
                                        k=2, epochs=1, lr=1e-3))
    assert sum(ptp_summary["histogram"]["train"].values()) == 48
    default = distill.run(build_options(distill.DistillOptions, **{**common, "teacher_cache_dir": None}, k=2,
                                        epochs=1, lr=1e-3, use_ptp=False, run_name="reads-default-cache"))
    assert default["teacher_dev_metrics"] != {"f1": 0.123, "accuracy": 0.456}


def test_pipeline_uses_and_names_the_teacher_given_by_teacher_dir(tmp_path, minilm_path, tiny_bert, glue_dir):
    """With --teacher_dir the pipeline fine-tunes nothing, caches and compares against THAT teacher."""
    from conftest import make_tiny_bert

    from dist_peakd.models import load_teacher

    given = make_tiny_bert(tmp_path / "given_teacher", minilm_path, num_layers=2, seed=7)
    load_teacher(given, 2).save_pretrained(str(given))  # a teacher has a trained head (a bare backbone is refused)
    out = tmp_path / "run"
    result = run_pipeline(_pipeline_opts(out, str(tiny_bert), glue_dir, teacher_dir=str(given)))
    assert result["teacher_dir"] == str(given)
    assert "teacher: given" in result["stages"][0]
    assert not (out / "mrpc" / "teacher").exists()  # nothing was fine-tuned
    teacher, student = result["rows"]
    assert teacher["num_parameter_layers"] == 2  # the given 2-layer teacher, not a fine-tuned 4-layer one
    cache = json.loads((out / "mrpc" / "teacher_cache" / "manifest.json").read_text())
    assert cache["num_layers"] == 2 and cache["teacher_dir"] == str(given.resolve())
    assert teacher["final"] == cache["teacher_dev_metrics"]
    assert (student["num_parameter_layers"], student["num_effective_layers"]) == (2, 4)
