"""DeepSpeed config resolution and validation (no engine needed)."""

import json
from pathlib import Path

import pytest

from dist_peakd.engine.ds_config import (
    ConfigError,
    build_ds_config,
    config_precision,
    ds_configs_dir,
    load_ds_config,
)

EXPECTED = {"fp32_zero0", "fp32_zero1", "fp32_zero2", "bf16_zero0", "bf16_zero1", "bf16_zero2",
            "fp16_zero1", "fp16_zero2", "zero2_offload"}


def test_every_shipped_config_loads_and_is_documented():
    stems = {p.stem for p in ds_configs_dir().glob("*.json")}
    assert EXPECTED <= stems
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for stem in stems:
        cfg = load_ds_config(stem)
        assert "zero_optimization" in cfg
        assert f"`{stem}.json`" in readme, f"{stem}.json missing from the README's config table"


def test_configs_are_package_data_and_the_top_level_folder_points_at_them():
    import dist_peakd

    assert ds_configs_dir() == Path(dist_peakd.__file__).parent / "ds_configs"
    top = Path(__file__).resolve().parents[2] / "ds_configs"
    assert top.resolve() == ds_configs_dir().resolve()
    assert load_ds_config(str(top / "bf16_zero1.json")) == load_ds_config("bf16_zero1")  # a user's own path works


def test_fp16_config_has_dynamic_loss_scaling():
    cfg = load_ds_config("fp16_zero1")
    assert cfg["fp16"]["enabled"] and cfg["fp16"]["loss_scale"] == 0


def test_overrides_fill_batch_sizes_precision_and_stage():
    cfg = build_ds_config(load_ds_config("fp32_zero0"), micro_batch_size=4, global_batch_size=32,
                          world_size=2, precision="bf16", zero_stage=2, gradient_clipping=0.5, on_gpu=False)
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 32 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert config_precision(cfg) == "bf16"
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["gradient_clipping"] == 0.5


def test_fp16_on_cpu_is_refused_with_a_clear_message():
    with pytest.raises(ConfigError, match="precision: fp16 needs a CUDA GPU"):
        build_ds_config(load_ds_config("fp32_zero0"), micro_batch_size=8, global_batch_size=8,
                        world_size=1, precision="fp16", on_gpu=False)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        build_ds_config(load_ds_config("fp16_zero1"), micro_batch_size=8, global_batch_size=8,
                        world_size=1, on_gpu=False)


def test_global_batch_not_divisible_is_refused():
    with pytest.raises(ConfigError, match=r"batch_size: global batch 30 is not divisible by micro_batch_size x ranks = 4 x 2"):
        build_ds_config({}, micro_batch_size=4, global_batch_size=30, world_size=2, on_gpu=False)


def test_missing_and_invalid_ds_config(tmp_path):
    with pytest.raises(ConfigError, match="ds_config: file 'nope' not found"):
        load_ds_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": ')
    with pytest.raises(ConfigError, match=r"is not valid JSON \(line 1"):
        load_ds_config(bad)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_ds_config(arr)


def test_unknown_precision_and_stage():
    with pytest.raises(ConfigError, match="option precision"):
        build_ds_config({}, micro_batch_size=1, global_batch_size=1, world_size=1, precision="fp8", on_gpu=False)
    with pytest.raises(ConfigError, match="option zero_stage"):
        build_ds_config({}, micro_batch_size=1, global_batch_size=1, world_size=1, zero_stage=5, on_gpu=False)
