"""Issue 12 end to end on a tiny pipeline (real MRPC slices): every stage folder is a shippable export
(labels, card = summary, clean tokenizer), --k auto, the ratios, evaluate = the stage's metrics,
export (plain, ONNX + int8) and predict (GLUE submission file, --input)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dist_peakd.config import build_options
from dist_peakd.export.card import parse_card_metadata
from dist_peakd.integrity import verify_export
from dist_peakd.stages import evaluate, export, predict
from dist_peakd.stages.pipeline import PipelineOptions
from dist_peakd.stages.pipeline import run as run_pipeline

pytestmark = pytest.mark.slow

MRPC_LABELS = ["not_equivalent", "equivalent"]
SLICE = dict(task="mrpc", max_length=40, max_train_examples=64, max_eval_examples=40, batch_size=16,
             eval_batch_size=16, log_every_steps=1, seed=0)
STUDENT = "distill-k1-shuffle-ptp-a0.7-T10-b100-s0"  # --k auto on the 4-layer tiny teacher: k = ceil(4/4) = 1


def _pipeline(out: Path, backbone: Path, glue_dir: Path, **kw) -> dict:
    values = dict(SLICE, output_dir=str(out), glue_dir=str(glue_dir), backbone=str(backbone),
                  cache_dir=str(out / "tok"), teacher_epochs=2, ptp_epochs=1, epochs=2, teacher_lr=1e-3,
                  ptp_lr=1e-3, lr=1e-3, latency_repeats=2)
    values.update(kw)
    return run_pipeline(build_options(PipelineOptions, **values))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, glue_dir):
    out = tmp_path_factory.mktemp("deploy")
    return out, _pipeline(out, tiny_bert, glue_dir)


def _opts(cls, run_dir: Path, glue_dir: Path, **kw):
    return build_options(cls, output_dir=str(run_dir), glue_dir=str(glue_dir), cache_dir=str(run_dir / "tok"), **kw)


def _summary(folder: Path) -> dict:
    return json.loads((folder.parent / "summary.json").read_text())


def _metrics(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("step", "epoch")}


def _folders(task_dir: Path) -> list[Path]:
    return [task_dir / "teacher" / "best", task_dir / "teacher" / "final", task_dir / "ptp-k1-shuffle" / "best",
            task_dir / STUDENT / "best", task_dir / STUDENT / "final"]


def test_k_auto_resolves_to_half_the_teachers_depth_and_names_the_folders(run):
    out, result = run
    task_dir = out / "mrpc"
    assert result["k"] == 1 and result["k_auto"]["teacher_layers"] == 4 and result["k_auto"]["rule"] == "ceil(L/4)"
    for stage in ("ptp-k1-shuffle", STUDENT):
        assert json.loads((task_dir / stage / "stage_options.json").read_text())["k"] == 1
        assert json.loads((task_dir / stage / "summary.json").read_text())["k"] == 1
    teacher, student = result["rows"]
    assert (student["num_parameter_layers"], student["num_effective_layers"]) == (1, 2)
    assert student["flops_per_token"] / teacher["flops_per_token"] == pytest.approx(0.5, rel=0.01)


def test_explicit_k_shares_the_folders_of_the_same_auto_k(run, tiny_bert, glue_dir):
    out, _ = run
    again = _pipeline(out, tiny_bert, glue_dir, k=1)
    assert all("reused" in line for line in again["stages"]), again["stages"]
    assert again["k_auto"] is None


def test_pipeline_states_the_ratios_to_the_teacher(run):
    out, _ = run
    result = json.loads((out / "mrpc" / "pipeline_summary.json").read_text())  # the newest run's
    ratios = result["student_vs_teacher"]
    teacher, student = result["rows"]
    assert ratios["latency"] == pytest.approx(student["latency_ms"] / teacher["latency_ms"])
    assert ratios["parameters"] == pytest.approx(student["parameters"] / teacher["parameters"])
    line = (f"student: {ratios['flops']:.2f}x FLOPs, {ratios['latency']:.2f}x latency, "
            f"{ratios['parameters']:.2f}x parameters (of the teacher)")
    assert line in (out / "mrpc" / "pipeline_summary.md").read_text()
    final = out / "mrpc" / STUDENT / "final"
    assert "## Measured latency" in (final / "README.md").read_text()
    latency = json.loads((final / "dist_peakd.json").read_text())["card"]["latency"]
    assert {r["model"]: r["median_ms"] for r in latency} == {"teacher": teacher["latency_ms"],
                                                             "student": student["latency_ms"]}
    verify_export(out / "mrpc" / STUDENT / "final")  # the card update kept the manifest right


def test_every_stage_folder_is_a_shippable_export(run):
    out, _ = run
    for folder in _folders(out / "mrpc"):
        verify_export(folder)
        config = json.loads((folder / "config.json").read_text())
        names = ["confident_correct", "unconfident_correct", "confident_wrong", "unconfident_wrong"] \
            if folder.parent.name.startswith("ptp") else MRPC_LABELS
        assert [config["id2label"][str(i)] for i in range(len(names))] == names, folder
        assert config["dtype"] == "float32"
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        assert "local_files_only" not in tok and "is_local" not in tok, folder
        record = json.loads((folder / "dist_peakd.json").read_text())
        assert record["task"] == "mrpc" and record["max_length"] == 40 and record["label_names"] == names
        assert (folder / "README.md").is_file()


def test_each_card_has_the_summarys_metrics_and_the_command(run):
    out, _ = run
    for folder in _folders(out / "mrpc"):
        card = (folder / "README.md").read_text()
        summary = _summary(folder)
        (entry,) = parse_card_metadata(card)["model-index"]
        got = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
        assert got == _metrics(summary[folder.name]), folder  # exactly the summary's numbers
        record = json.loads((folder / "dist_peakd.json").read_text())
        assert record["card"]["command"] in card and '"max_length": 40' in card
        assert json.loads((folder.parent / "stage_options.json").read_text()) == record["card"]["options"]
    student_card = (out / "mrpc" / STUDENT / "final" / "README.md").read_text()
    assert "k = 1 parameter layers run as 2 effective layers" in student_card
    assert "| effective layers | 2 | 4 | 0.50x |" in student_card


def test_stage_folder_loads_in_plain_transformers_with_its_label_names(run):
    out, _ = run
    folder = out / "mrpc" / STUDENT / "final"
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["dist_peakd"] = None
        from transformers import pipeline
        clf = pipeline("text-classification", model={str(folder)!r}, trust_remote_code=True)
        res = clf([{{"text": "A cat sat.", "text_pair": "A cat was sitting."}}], top_k=None)
        print(json.dumps(sorted(r["label"] for r in res[0])))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == sorted(MRPC_LABELS)


@pytest.mark.parametrize("stage, which", [("teacher", "best"), ("teacher", "final"), (STUDENT, "best"),
                                          (STUDENT, "final")])
def test_evaluate_reproduces_the_stages_dev_metrics_exactly(run, glue_dir, stage, which):
    out, _ = run
    folder = out / "mrpc" / stage / which
    result = evaluate.run(_opts(evaluate.EvaluateOptions, out, glue_dir, model_dir=str(folder),
                                max_eval_examples=40, eval_batch_size=16, out=str(out / f"eval-{stage}-{which}.json")))
    assert result["metrics"] == _metrics(_summary(folder)[which])
    assert result["task"] == "mrpc" and result["max_length"] == 40 and result["rows"] == 40  # from the folder
    assert json.loads((out / f"eval-{stage}-{which}.json").read_text()) == json.loads(json.dumps(result))


def test_plain_and_onnx_exports_score_as_the_source(run, glue_dir):
    out, _ = run
    source = out / "mrpc" / STUDENT / "final"
    want = _metrics(_summary(source)["final"])
    plain = export.run(_opts(export.ExportOptions, out, glue_dir, model_dir=str(source), format="plain",
                             out=str(out / "ship" / "plain")))
    config = json.loads((out / "ship" / "plain" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 2 and "auto_map" not in config
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert "modeling_sps_bert.py" not in plain["files"]
    onnx = export.run(_opts(export.ExportOptions, out, glue_dir, model_dir=str(source), format="onnx",
                            quantize="int8", out=str(out / "ship" / "onnx")))
    assert onnx["max_abs_diff"] <= 1e-4 and onnx["max_abs_diff_int8"] is not None
    assert {"model.onnx", "model_int8.onnx", "README.md"} <= set(onnx["files"])
    assert parse_card_metadata((out / "ship" / "onnx" / "README.md").read_text())["library_name"] == "onnx"
    for folder, graph in ((out / "ship" / "plain", None), (out / "ship" / "onnx", None),
                          (out / "ship" / "onnx", "model_int8.onnx")):
        result = evaluate.run(_opts(evaluate.EvaluateOptions, out, glue_dir, model_dir=str(folder), onnx_file=graph,
                                    max_eval_examples=40, eval_batch_size=16))
        if graph is None:  # the task's metrics exactly; the dev loss to float precision (ONNX logits differ ~1e-6)
            got = dict(result["metrics"])
            assert got.pop("loss") == pytest.approx(want["loss"], rel=1e-6), folder
            assert got == {k: v for k, v in want.items() if k != "loss"}, folder
        else:  # int8: reported, not equal
            assert set(result["metrics"]) == set(want) and result["graph"] == "model_int8.onnx"


def test_predict_writes_the_glue_submission_file_and_probabilities(run, glue_dir):
    out, _ = run
    folder = out / "mrpc" / STUDENT / "final"
    preds = out / "preds" / "mrpc_test.tsv"
    result = predict.run(_opts(predict.PredictOptions, out, glue_dir, model_dir=str(folder), out=str(preds)))
    n_test = sum(1 for _ in (glue_dir / "MRPC" / "test.tsv").open(encoding="utf-8-sig")) - 1
    submission = (out / "preds" / "MRPC.tsv").read_text().splitlines()
    assert result["submission"] == str(out / "preds" / "MRPC.tsv") and result["rows"] == n_test
    assert submission[0] == "index\tprediction" and len(submission) == n_test + 1
    assert [line.split("\t")[0] for line in submission[1:]] == [str(i) for i in range(n_test)]
    assert {line.split("\t")[1] for line in submission[1:]} <= {"0", "1"}
    rows = preds.read_text().splitlines()
    assert rows[0] == "index\tlabel\tp_not_equivalent\tp_equivalent" and len(rows) == n_test + 1
    probs = np.array([[float(x) for x in r.split("\t")[2:]] for r in rows[1:]])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    labels = [r.split("\t")[1] for r in rows[1:]]
    assert [MRPC_LABELS[i] for i in probs.argmax(1)] == labels
    assert [MRPC_LABELS[int(s.split("\t")[1])] for s in submission[1:]] == labels


def test_predict_on_an_own_file_matches_the_split(run, glue_dir):
    out, _ = run
    folder = out / "mrpc" / STUDENT / "final"
    dev = [line.split("\t") for line in (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()]
    rows = dev[1:6]
    pairs = out / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence1": r[3], "sentence2": r[4]}) + "\n" for r in rows))
    got = out / "pairs_pred.jsonl"
    predict.run(_opts(predict.PredictOptions, out, glue_dir, model_dir=str(folder), input=str(pairs), out=str(got)))
    split = out / "dev_pred.jsonl"
    predict.run(_opts(predict.PredictOptions, out, glue_dir, model_dir=str(folder), split="dev", max_eval_examples=5,
                      out=str(split)))
    mine = [json.loads(x) for x in got.read_text().splitlines()]
    theirs = [json.loads(x) for x in split.read_text().splitlines()]
    assert [r["index"] for r in mine] == list(range(5))
    assert [r["label"] for r in mine] == [r["label"] for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert not (out / "MRPC.tsv").exists()  # only a GLUE test split writes a submission file


def test_latency_bench_finds_the_pipelines_models(run):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.latency import find_run_models

    out, _ = run
    teacher, student = find_run_models(out / "mrpc")
    assert teacher == out / "mrpc" / "teacher" / "best" and student == out / "mrpc" / STUDENT / "final"


def test_predicted_dev_probabilities_are_the_cached_teachers(run, glue_dir):
    """Row by row: predict on the teacher folder = the teacher outputs cache-teacher stored by example id."""
    from dist_peakd.cache import TeacherCache

    out, _ = run
    preds = out / "teacher_dev.jsonl"
    predict.run(_opts(predict.PredictOptions, out, glue_dir, model_dir=str(out / "mrpc" / "teacher" / "best"),
                      split="dev", max_eval_examples=40, out=str(preds)))
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    ids = np.array([r["index"] for r in rows])
    logits, _ = TeacherCache.open(out / "mrpc" / "teacher_cache").split("dev").lookup(ids)
    z = logits.numpy().astype(np.float64)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    got = np.array([[r["probabilities"][n] for n in MRPC_LABELS] for r in rows])
    assert len(rows) == 40 and np.abs(got - want).max() < 2e-6


def test_evaluate_command_prints_its_banner_and_the_metrics_in_one_line(run, glue_dir, capsys, tmp_path):
    from dist_peakd import cli

    out, _ = run
    folder = out / "mrpc" / STUDENT / "final"
    cli.main(["evaluate", "--model_dir", str(folder), "--output_dir", str(out), "--glue_dir", str(glue_dir),
              "--cache_dir", str(out / "tok"), "--max_eval_examples", "40", "--eval_batch_size", "16",
              "--out", str(tmp_path / "eval.json")])
    printed = capsys.readouterr().out.splitlines()
    want = _metrics(_summary(folder)["final"])  # the stage's dev metrics, its dev loss included
    assert "loss" in want
    assert printed[0] == f"[1/1] evaluate: {folder}, dev split of mrpc"
    # the trivial baseline of the same 40 dev rows (25 "equivalent"): always 1 -> F1 50/65, accuracy 25/40
    baseline = json.loads((tmp_path / "eval.json").read_text())["baseline"]
    assert baseline["metrics"] == {"f1": pytest.approx(50 / 65), "accuracy": pytest.approx(25 / 40)}
    assert baseline["metrics"] == _summary(folder)["baseline"]["metrics"]  # the stage's, of the same rows
    end = printed[-2]  # the tiny student predicts one class for these 40 rows: then the baseline warning
    assert end.startswith("[dist-peakd] evaluate done: " + ", ".join(f"{k} {v:.4f}" for k, v in want.items())
                          + " (dev, 40 rows); baseline f1 0.7692 (majority: equivalent); ")
    assert "of the teacher's gain over it" in end or end.endswith("the teacher does not beat the baseline")
    assert printed[-1] == ("[dist-peakd] warning: mrpc: f1 0.7692 is at or below the trivial baseline's 0.7692 "
                           "(majority: equivalent, on the same 40 rows): the model is no better than always "
                           "predicting the majority class")
    # before it only the metric warnings
    assert printed[1:-2] == ["[dist-peakd] warning: mrpc: all 40 predictions are class 'equivalent'"]
