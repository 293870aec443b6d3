"""Issue 27 item 7: the compact SPS folder states and checks its transformers floor (4.57 failed with
``StrictDataclassDefinitionError``; the real trial on 4.57.6 / 5.0-5.3 vs 5.4+ is in docs/EXPORT.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from dist_peakd.export import export_compact
from dist_peakd.models import build_student
from dist_peakd.models import configuration_sps_bert as sps_config

REFUSAL = r"needs transformers >= 5\.4\.0; installed: transformers {}\. Upgrade .*--format plain"


@pytest.mark.parametrize("old", ["4.57.6", "5.3.0", "5.0.0rc1"])
def test_an_older_transformers_is_refused_naming_both_versions(old):
    with pytest.raises(ImportError, match=REFUSAL.format(old.replace(".", r"\."))):
        sps_config.check_transformers_version(old)


@pytest.mark.parametrize("new", ["5.4.0", "5.4.0.dev0", "5.25.0", "6.1.0"])
def test_the_floor_and_newer_pass(new):
    sps_config.check_transformers_version(new)


def _load_module(path: Path, name: str, monkeypatch):
    """Execute the shipped file as its own module (as trust_remote_code does), registered while it runs."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_shipped_code_checks_the_version_when_it_loads(tmp_path, tiny_bert, monkeypatch):
    torch.manual_seed(0)
    student = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2)
    folder = export_compact(student, tmp_path / "compact", tokenizer=AutoTokenizer.from_pretrained(str(tiny_bert)))
    assert _load_module(folder / "configuration_sps_bert.py", "sps_cfg_ok", monkeypatch).MIN_TRANSFORMERS == "5.4.0"
    # the module the shipped file's `import transformers` gets (sys.modules' entry: some test plugins
    # re-import transformers, so it need not be the object this file imported)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.57.6")
    with pytest.raises(ImportError, match=REFUSAL.format(r"4\.57\.6")):
        _load_module(folder / "configuration_sps_bert.py", "sps_cfg_old", monkeypatch)


def test_the_compact_card_states_the_floor():
    from dist_peakd.export import render_model_card

    card = render_model_card(name="s", task={"name": "mrpc"}, dev_metrics={"final": {"accuracy": 0.5}},
                             method={"kind": "student"}, stats={}, command="c", options={}, versions={})
    assert "needs **transformers >= 5.4.0** (checked when it loads" in card
