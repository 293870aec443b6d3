"""Issue 12 pieces without training: --k auto, the deploy commands' options, prediction files, card updates,
fp32 exports, and (slow) the wheel's contents."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert

from dist_peakd.config import build_options
from dist_peakd.data import get_task
from dist_peakd.errors import ConfigError
from dist_peakd.export import export_compact, read_folder_record, render_model_card, update_card
from dist_peakd.integrity import verify_export
from dist_peakd.stages import distill, evaluate, export, predict, ptp, sweep
from dist_peakd.stages.depth import auto_k, normalise_k, resolve_k

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- --k auto
@pytest.mark.parametrize(("layers", "variant", "k"), [(6, "shuffle", 2), (12, "shuffle", 3), (12, "share", 3),
                                                     (4, "shuffle", 1), (2, "shuffle", 1), (24, "shuffle", 6),
                                                     (6, "none", 3), (12, "none", 6)])
def test_auto_k_is_half_the_teachers_depth_in_effective_layers(layers, variant, k):
    assert auto_k(layers, variant) == k


def test_k_option_takes_auto_or_a_positive_integer(tmp_path):
    assert build_options(distill.DistillOptions).k == "auto" and build_options(ptp.PTPOptions).k == "auto"
    assert build_options(distill.DistillOptions, k="3").k == 3 and build_options(ptp.PTPOptions, k="AUTO").k == "auto"
    for bad in (0, "two", 1.5, True):
        # True is refused by the one typing path (issue 14 item 5) before the depth check sees it
        with pytest.raises(ConfigError, match="option k: (student depth must be 'auto' or an integer >= 1|"
                                              "expected an integer or text)"):
            build_options(distill.DistillOptions, k=bad)
    assert normalise_k(2.0) == 2


def test_resolve_k_reads_the_teacher_else_the_backbone(tmp_path, minilm_path):
    six = make_tiny_bert(tmp_path / "six", minilm_path, num_layers=6)
    twelve = make_tiny_bert(tmp_path / "twelve", minilm_path, num_layers=12)
    opts = build_options(distill.DistillOptions, backbone=str(six), output_dir=str(tmp_path / "runs"))
    resolved, note = resolve_k(opts)
    assert resolved.k == 2 and note == {"requested": "auto", "k": 2, "teacher_layers": 6, "teacher": str(six),
                                        "rule": "ceil(L/4)"}
    assert resolved.stage_name().startswith("distill-k2-shuffle") and opts.k == "auto"  # a copy; opts unchanged
    given = build_options(distill.DistillOptions, backbone=str(six), teacher_dir=str(twelve))
    assert resolve_k(given)[0].k == 3  # the teacher folder decides when it exists
    explicit, note = resolve_k(build_options(distill.DistillOptions, k=4, backbone=str(six)))
    assert explicit.k == 4 and note is None


def test_sweep_refuses_auto_as_a_swept_k():
    with pytest.raises(ConfigError, match="option space: k values must be integers"):
        build_options(sweep.SweepOptions, space='{"k": ["auto", 2]}')


# ------------------------------------------------------------------------------------------- options
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert) -> Path:
    """A compact teacher folder with a record (task, max_length) as the stages write it."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.from_pretrained(str(tiny_bert), num_labels=2)).eval()
    inputs = {"name": "tiny", "task": {"name": "mrpc"}, "dev_metrics": {"final": {"f1": 0.5, "accuracy": 0.5}},
              "method": {"kind": "teacher", "backbone": "x"}, "stats": {"parameters": 1}, "command": "dist-peakd x",
              "options": {"k": 1}, "exported": "final", "versions": {}}
    record = {"task": "mrpc", "max_length": 24, "label_names": ["not_equivalent", "equivalent"], "card": inputs}
    return export_compact(model, tmp_path_factory.mktemp("m") / "final", AutoTokenizer.from_pretrained(str(tiny_bert)),
                          label_names=record["label_names"], card=render_model_card(**inputs),
                          extra_files={"dist_peakd.json": record})


@pytest.mark.parametrize(("cls", "kw", "message"), [
    (evaluate.EvaluateOptions, {"model_dir": None}, "option model_dir: required"),
    (evaluate.EvaluateOptions, {"model_dir": "/no/such/folder"}, "option model_dir: '/no/such/folder' is not a folder"),
    (evaluate.EvaluateOptions, {"split": "test"}, "option split: 'test' is not a labelled split of mrpc"),
    (predict.PredictOptions, {}, "option out: required"),
    (predict.PredictOptions, {"out": "p.csv"}, r"option out: 'p.csv' must end in .tsv or .jsonl"),
    (predict.PredictOptions, {"out": "p.tsv", "input": "/no/file.tsv"}, "option input: '/no/file.tsv' is not a file"),
    (predict.PredictOptions, {"out": "p.tsv", "split": "nope"}, "option split: 'nope' is not a split of mrpc"),
    (export.ExportOptions, {"format": "gguf", "out": "x"}, "option format: 'gguf' is not one of"),
    (export.ExportOptions, {}, "option out: required"),
    (export.ExportOptions, {"format": "plain", "quantize": "int8", "out": "x"}, "option quantize: int8 applies to"),
    (export.ExportOptions, {"format": "onnx", "quantize": "int4", "out": "x"}, "option quantize: 'int4' is not"),
])
def test_model_folder_commands_refuse_bad_options(model_dir, cls, kw, message):
    values = {"model_dir": str(model_dir), **kw}
    with pytest.raises(ConfigError, match=message):
        build_options(cls, **values)


def test_task_and_max_length_come_from_the_folder(model_dir, tmp_path):
    opts = build_options(evaluate.EvaluateOptions, model_dir=str(model_dir))
    assert (opts.task, opts.max_length) == ("mrpc", 24)
    opts = build_options(evaluate.EvaluateOptions, model_dir=str(model_dir), task="rte", max_length=64)
    assert (opts.task, opts.max_length) == ("rte", 64)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConfigError, match="option task: required"):
        build_options(evaluate.EvaluateOptions, model_dir=str(bare))


# ------------------------------------------------------------------------------------------- prediction files
def test_prediction_and_submission_lines():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ids = np.array([0, 1])
    lines = predict.prediction_lines(logits, ids, ["neg", "pos"], False, ".tsv")
    assert lines[0] == "index\tlabel\tp_neg\tp_pos"
    assert lines[1].split("\t")[:2] == ["0", "neg"] and float(lines[1].split("\t")[2]) == pytest.approx(0.880797, abs=1e-6)
    row = json.loads(predict.prediction_lines(logits, ids, ["neg", "pos"], False, ".jsonl")[1])
    assert row["index"] == 1 and row["label"] == "pos" and sum(row["probabilities"].values()) == pytest.approx(1)
    assert predict.submission_lines(get_task("rte"), logits, ids) == ["index\tprediction", "0\tentailment",
                                                                      "1\tnot_entailment"]
    scores = np.array([[3.25], [0.5]], dtype=np.float32)
    assert predict.submission_lines(get_task("stsb"), scores, ids)[1:] == ["0\t3.250000", "1\t0.500000"]
    assert predict.prediction_lines(scores, ids, ["score"], True, ".tsv") == ["index\tprediction", "0\t3.250000",
                                                                             "1\t0.500000"]


@pytest.mark.parametrize(("task", "split", "name"), [("mrpc", "test", "MRPC.tsv"), ("sst2", "test", "SST-2.tsv"),
                                                     ("stsb", "test", "STS-B.tsv"), ("cola", "test", "CoLA.tsv"),
                                                     ("mnli", "test_matched", "MNLI-m.tsv"),
                                                     ("mnli", "test_mismatched", "MNLI-mm.tsv"), ("mrpc", "dev", None)])
def test_glue_submission_file_names(tmp_path, task, split, name):
    opts = predict.PredictOptions(task=task, out=str(tmp_path / "p.tsv"))
    path = predict.submission_path(opts, get_task(task), split)
    assert (path.name if path else None) == name and (path is None or path.parent == tmp_path)
    clash = predict.PredictOptions(task="mrpc", out=str(tmp_path / "MRPC.tsv"))
    with pytest.raises(ConfigError, match="is the GLUE submission file's name"):
        predict.submission_path(clash, get_task("mrpc"), "test")


# ------------------------------------------------------------------------------------------- exports
def test_update_card_adds_latency_and_keeps_the_folder_verified(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(model_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    update_card(folder, latency=[{"model": "student", "median_ms": 1.5}])
    verify_export(folder)
    assert "## Measured latency" in (folder / "README.md").read_text()
    assert read_folder_record(folder)["card"]["latency"] == [{"model": "student", "median_ms": 1.5}]
    assert (folder / "model.safetensors").read_bytes() == weights
    assert not any(p.name.startswith((".tmp", ".old")) for p in tmp_path.iterdir())


def test_compact_export_of_a_bf16_module_is_fp32_and_leaves_the_model_alone(tmp_path, tiny_bert):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig.from_pretrained(str(tiny_bert), num_labels=2)).to(torch.bfloat16)
    before = dict(model.config.id2label)
    out = export_compact(model, tmp_path / "e", label_names=["a", "b"])
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["id2label"] == {"0": "a", "1": "b"}
    assert model.config.id2label == before and next(model.parameters()).dtype == torch.bfloat16
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
def test_the_wheel_ships_the_ds_configs_and_the_model_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("dist_peakd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "ds_configs").glob("*.json")}
    assert {f"dist_peakd/ds_configs/{n}" for n in shipped} <= names and "dist_peakd/ds_configs/fp32_zero0.json" in names
    assert {"dist_peakd/models/modeling_sps_bert.py", "dist_peakd/models/configuration_sps_bert.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_packages_meet_the_declared_floors():
    """Every dependency pyproject.toml declares is installed at a version inside its declared range."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in [*project["dependencies"], *project["optional-dependencies"]["deploy"]]:
        req = Requirement(line)
        assert req.specifier.contains(md.version(req.name), prereleases=True), (line, md.version(req.name))
    assert any(r.startswith("transformers>=5.4") for r in project["dependencies"])
