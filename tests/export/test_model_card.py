"""Model card: Hub metadata (model-index) from the given metrics, readable body, loading instructions."""

from __future__ import annotations

import pytest

from dist_peakd.export import render_model_card
from dist_peakd.export.card import library_versions, parse_card_metadata

TASK = {"name": "mrpc", "dataset_name": "GLUE MRPC", "dataset_type": "nyu-mll/glue", "config": "mrpc",
        "split": "validation"}
METRICS = {"final": {"accuracy": 0.7525, "f1": 0.8312}, "best": {"accuracy": 0.7598, "f1": 0.8351},
           "teacher": {"accuracy": 0.7819, "f1": 0.8490}}
METHOD = {"kind": "student", "teacher": "runs/mrpc/teacher/final", "k": 2, "variant": "shuffle",
          "num_effective_layers": 4, "schedule": [[0, False], [1, False], [0, True], [1, True]], "ptp": True}
STATS = {"parameters": 15_000_000, "num_parameter_layers": 2, "num_effective_layers": 4,
         "flops_per_token": 1.5e7, "forward_gflops_per_sequence": 1.92, "seq_len": 128}
TEACHER_STATS = {"parameters": 22_700_000, "num_parameter_layers": 6, "num_effective_layers": 6,
                 "flops_per_token": 2.25e7, "forward_gflops_per_sequence": 2.88}
COMMAND = "dist-peakd pipeline --task mrpc --out_dir runs/mrpc --k auto"


def _card(**kw) -> str:
    args = dict(name="mrpc-sps-k2", task=TASK, dev_metrics=METRICS, method=METHOD, stats=STATS, command=COMMAND,
                options={"k": 2, "variant": "shuffle", "temperature": 10.0}, teacher_stats=TEACHER_STATS,
                latency=[{"runtime": "onnxruntime fp32", "batch": 1, "seq": 128, "median_ms": 3.25}],
                versions={"torch": "2.13.0", "transformers": "5.24.0"})
    args.update(kw)
    return render_model_card(**args)


def test_metadata_model_index_has_the_exported_checkpoints_metrics() -> None:
    meta = parse_card_metadata(_card())
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    assert meta["datasets"] == ["nyu-mll/glue"] and "pea-kd" in meta["tags"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "mrpc-sps-k2"
    (result,) = entry["results"]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"name": "GLUE MRPC", "type": "nyu-mll/glue", "config": "mrpc", "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == METRICS["final"]
    best = parse_card_metadata(_card(exported="best"))["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in best} == METRICS["best"]


def test_body_states_method_metrics_cost_latency_command_versions() -> None:
    card = _card()
    body = card.split("\n---\n", 1)[1]
    assert "k = 2 parameter layers run as 4 effective layers" in body and "`shuffle`" in body
    assert "| f1 | 0.8312 | 0.8351 | 0.8490 |" in body
    assert "| effective layers | 4 | 6 | 0.67x |" in body
    assert "| GFLOPs / sequence | 1.9200 | 2.8800 | 0.67x |" in body
    assert "| onnxruntime fp32 | 1 | 128 | 3.2500 |" in body
    assert COMMAND in body and '"temperature": 10.0' in body
    assert "- torch 2.13.0" in body and "- transformers 5.24.0" in body


@pytest.mark.parametrize(("fmt", "must", "must_not"), [
    ("compact", "trust_remote_code=True", "model.onnx"),
    ("plain", "BertForSequenceClassification", "trust_remote_code=True"),
    ("onnx", "ort.InferenceSession", "trust_remote_code=True"),
])
def test_how_to_load_follows_the_format(fmt: str, must: str, must_not: str) -> None:
    card = _card(export_format=fmt)
    section = card.split("## How to load", 1)[1].split("## How it was made", 1)[0]
    assert must in section and must_not not in section
    assert ("--optimize False" in section) == (fmt == "onnx")  # the fused graph needs onnxruntime: say so
    assert parse_card_metadata(card)["library_name"] == ("onnx" if fmt == "onnx" else "transformers")


def test_teacher_card_and_bad_inputs() -> None:
    card = _card(method={"kind": "teacher", "backbone": "minilm"}, teacher_stats=None,
                 dev_metrics={"final": METRICS["teacher"]}, latency=None)
    assert "the teacher" in card and "pea-kd" not in parse_card_metadata(card)["tags"]
    assert "## Measured latency" not in card
    with pytest.raises(ValueError, match="export_format"):
        _card(export_format="gguf")
    with pytest.raises(ValueError, match="exported='best'"):
        _card(dev_metrics={"final": METRICS["final"]}, exported="best")


def test_library_versions_lists_installed_ones() -> None:
    versions = library_versions()
    assert "torch" in versions and "transformers" in versions and "dist_peakd" in versions
