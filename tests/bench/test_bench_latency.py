"""bench/latency.py: the smoke run end to end (tiny models, real ONNX export), run-folder discovery."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_latency", REPO / "bench" / "latency.py")
latency = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = latency
spec.loader.exec_module(latency)


def test_smoke_run_reports_every_cell_and_appends_nothing(tmp_path: Path) -> None:
    md = REPO / "docs" / "BENCHMARKS.md"
    before = md.read_bytes()
    out = tmp_path / "latency.json"
    report = latency.main(["--smoke", "--batches", "1", "2", "--seqs", "8", "--repeats", "2", "--warmup", "0",
                           "--out_json", str(out), "--no_markdown", "--work_dir", str(tmp_path / "work")])
    assert md.read_bytes() == before
    saved = json.loads(out.read_text())
    assert saved["smoke"] is True and [(c["batch"], c["seq"]) for c in saved["cells"]] == [(1, 8), (2, 8)]
    for cell in saved["cells"]:
        for model in ("teacher", "student"):
            for runtime in latency.RUNTIMES:
                assert cell[f"{model} {runtime}"] > 0
        for runtime in latency.ORT_RUNTIMES:
            assert cell[f"speedup {runtime}"] == pytest.approx(cell["teacher eager"] / cell[f"student {runtime}"])
    assert "target" not in saved  # batch 1 / seq 128 was not measured
    stats = saved["models"]["student"]["stats"]
    assert stats["num_parameter_layers"] == 1 and stats["num_effective_layers"] == 2
    assert (tmp_path / "work" / "student-onnx" / "model_int8.onnx").is_file()
    assert saved["student_dev_metrics"] is None  # smoke: random folders record no task
    text = latency.markdown(report)
    assert "SMOKE" in text and "| 2 | 8 |" in text and "0.50x the teacher's FLOPs/token" in text


def test_target_needs_speed_and_dev_metrics_within_the_allowed_drop() -> None:
    cell = {"speedup ort-fp32": 1.7, "speedup ort-int8": 2.6}
    metrics = {"eager": {"f1": 0.80, "accuracy": 0.70, "loss": 0.5},
               "ort-fp32": {"f1": 0.80, "accuracy": 0.70, "loss": 0.5},
               "ort-int8": {"f1": 0.79, "accuracy": 0.701, "loss": 0.9}}
    got = latency.target_check(cell, metrics)
    assert got["met"] and got["met_by"] == "ort-int8"
    assert got["runtimes"]["ort-int8"]["metric_drop_points"] == pytest.approx(1.0)  # f1; loss is not a metric here
    assert not got["runtimes"]["ort-fp32"]["meets"]  # fast enough it is not
    metrics["ort-int8"]["accuracy"] = 0.684  # 1.6 points below the PyTorch student
    assert latency.target_check(cell, metrics)["met"] is False
    assert latency.target_check(cell, None) == {**latency.TARGET, "met": False, "met_by": None, "runtimes": {
        r: {"speedup": cell[f"speedup {r}"], "metric_drop_points": None, "meets": False}
        for r in latency.ORT_RUNTIMES}}


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_find_run_models_takes_teacher_best_and_newest_distill(tmp_path: Path) -> None:
    teacher = _folder(tmp_path / "teacher" / "best")
    old = _folder(tmp_path / "distill-k3" / "final")
    new = _folder(tmp_path / "distill-k2" / "final")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    assert latency.find_run_models(tmp_path) == (teacher, new)
    with pytest.raises(SystemExit, match="teacher/best and distill"):
        latency.find_run_models(tmp_path / "teacher")
