"""What the benchmark scripts share: the environment record and where reports go."""

from __future__ import annotations

import importlib
import json
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"


def environment(device: str, *modules: str) -> dict:
    """The device's name and the versions of torch, deepspeed and ``modules`` (e.g. ``"ray"``)."""
    import torch

    name = (torch.cuda.get_device_name(0) if device == "cuda"
            else f"{platform.processor() or platform.machine()} CPU x {os.cpu_count()}")
    versions = {m: importlib.import_module(m).__version__ for m in ("torch", "deepspeed", *modules)}
    return {"device": name, **versions}


def append_markdown(md: str, enabled: bool = True) -> None:
    """Print a report's Markdown table and (unless disabled) append it to docs/BENCHMARKS.md."""
    print(md)
    if enabled:
        with open(BENCHMARKS_MD, "a") as f:
            f.write("\n" + md)


def write_report(report: dict, out_json: Path, md: str, append: bool = True) -> None:
    """Write a benchmark's JSON report, then print/append its Markdown table."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))
    append_markdown(md, append)
