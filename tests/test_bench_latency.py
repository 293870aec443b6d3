"""bench/latency.py: the smoke run end to end (tiny models, real ONNX export), run-folder discovery."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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
        assert cell["speedup"] == pytest.approx(cell["teacher eager"] / cell["student ort-fp32"])
    assert "target" not in saved  # batch 1 / seq 128 was not measured
    stats = saved["models"]["student"]["stats"]
    assert stats["num_parameter_layers"] == 1 and stats["num_effective_layers"] == 2
    assert (tmp_path / "work" / "student_int8.onnx").is_file()
    text = latency.markdown(report)
    assert "SMOKE" in text and "| 2 | 8 |" in text and "0.50x the teacher's FLOPs/token" in text


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
