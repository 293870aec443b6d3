"""A stage folder's saved options are ``stage_options.json`` (issue 26: never confused with the HF model's
``config.json`` in ``best/``/``final/``); a folder an older version made, whose options are ``config.json``,
is still read, compared and taken over (its options renamed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dist_peakd import locking
from dist_peakd.config import RunOptions
from dist_peakd.errors import ConfigError
from dist_peakd.layout import LEGACY_STAGE_OPTIONS, MODEL_CONFIG, STAGE_OPTIONS, stage_options_file
from dist_peakd.stages.stage_folder import claim_stage_dir, options_differences


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    locking.release()


def _old_folder(path, **options):
    """A finished stage folder as the previous version left it: options in config.json, a summary."""
    path.mkdir()
    (path / LEGACY_STAGE_OPTIONS).write_text(json.dumps(dataclasses.asdict(RunOptions(task="mrpc", **options))))
    (path / "summary.json").write_text("{}")
    (path / "final").mkdir()
    (path / "final" / MODEL_CONFIG).write_text(json.dumps({"model_type": "bert"}))
    return path


def test_a_claimed_folder_holds_stage_options_json_and_no_config_json(tmp_path):
    stage = tmp_path / "teacher"
    claim_stage_dir(stage, RunOptions(task="mrpc", lr=3e-4))
    assert json.loads((stage / STAGE_OPTIONS).read_text())["lr"] == 3e-4
    assert not (stage / "config.json").exists()
    assert stage_options_file(stage) == stage / STAGE_OPTIONS


def test_an_old_folder_with_config_json_is_read_and_its_options_renamed(tmp_path):
    stage = _old_folder(tmp_path / "teacher", seed=3)
    assert stage_options_file(stage) == stage / LEGACY_STAGE_OPTIONS
    assert options_differences(stage, RunOptions(task="mrpc", seed=4)) == ["seed: 3 -> 4"]
    with pytest.raises(ConfigError, match=r"teacher was made with other options \(seed: 3 -> 4\)"):
        claim_stage_dir(stage, RunOptions(task="mrpc", seed=4))
    assert (stage / LEGACY_STAGE_OPTIONS).is_file() and not (stage / STAGE_OPTIONS).exists()  # refused: as it was
    claim_stage_dir(stage, RunOptions(task="mrpc", seed=3))  # the same options: resumed / reused
    assert json.loads((stage / STAGE_OPTIONS).read_text())["seed"] == 3
    assert not (stage / LEGACY_STAGE_OPTIONS).exists()
    assert json.loads((stage / "final" / MODEL_CONFIG).read_text()) == {"model_type": "bert"}  # the model's: kept


def test_a_model_config_is_never_taken_for_stage_options(tmp_path):
    """A folder whose config.json is a model's (``model_type``) has no saved stage options."""
    (tmp_path / MODEL_CONFIG).write_text(json.dumps({"model_type": "bert", "seed": 9}))
    assert stage_options_file(tmp_path) is None
    assert options_differences(tmp_path, RunOptions(task="mrpc")) == []
    assert stage_options_file(tmp_path / "missing") is None


def test_the_new_file_wins_over_an_old_one(tmp_path):
    (tmp_path / LEGACY_STAGE_OPTIONS).write_text(json.dumps(dataclasses.asdict(RunOptions(task="mrpc", seed=1))))
    (tmp_path / STAGE_OPTIONS).write_text(json.dumps(dataclasses.asdict(RunOptions(task="mrpc", seed=2))))
    assert options_differences(tmp_path, RunOptions(task="mrpc", seed=2)) == []
