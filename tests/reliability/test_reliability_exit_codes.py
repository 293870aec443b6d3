"""The documented exit codes of ``dist-peakd <stage>`` (docs/RELIABILITY.md) and the fault-injection syntax."""

from __future__ import annotations

import errno

import pytest
from fault_plugin import Fault, parse_faults

from dist_peakd.cache import CacheCorruptError
from dist_peakd.data.errors import LabelError
from dist_peakd.errors import (
    ArtifactCorruptError,
    ArtifactWriteError,
    ConfigError,
    NonFiniteLossError,
    Preempted,
    StopRequested,
)
from dist_peakd.guard import run_guarded


@pytest.mark.parametrize("exc,code,text", [
    (ConfigError("option alpha: must be in [0, 1], got 2"), 2, "option alpha"),
    (NonFiniteLossError("non-finite loss at step 4 on rank 0: term(s) pt=nan"), 3, "step 4"),
    (LabelError("/d/STS-B/train.tsv", 7, "x", "a float score in [0, 5]"), 4, "/d/STS-B/train.tsv:7:"),
    (ArtifactCorruptError("/r/best/model.safetensors", "sha256 differs"), 4, "/r/best/model.safetensors"),
    (CacheCorruptError("/r/cache/train/shard/cls.npy", "missing"), 4, "cls.npy"),
    (ArtifactWriteError(errno.ENOSPC, "writing checkpoint /r/ckpt/step-2 failed", "/r/ckpt/.tmp-step-2"), 6,
     "/r/ckpt/step-2"),
    (StopRequested("stopped after step 2; checkpoint at /r/ckpt/step-2", "/r/ckpt/step-2"), 75, "step-2"),
    (Preempted("preempted", "/r/ckpt/step-3"), 143, "preempted (SIGTERM), checkpoint at /r/ckpt/step-3"),
    (ValueError("something unexpected"), 1, "ValueError: something unexpected"),
])
def test_failures_map_to_documented_exit_codes(exc, code, text, capsys):
    def stage(_):
        raise exc

    with pytest.raises(SystemExit) as info:
        run_guarded("distill", stage, None)
    assert info.value.code == code
    assert text in capsys.readouterr().err


def test_success_returns_the_result():
    assert run_guarded("distill", lambda x: {"ok": x}, 1) == {"ok": 1}


def test_fault_injection_syntax():
    assert parse_faults(None) == []
    assert parse_faults("sigkill:rank=1:step=9,sigterm:rank=0:step=3") == [Fault("sigkill", 1, 9),
                                                                           Fault("sigterm", 0, 3)]
    for bad in ("sigkill:rank=1", "explode:rank=0:step=1", "sigkill:rank=x:step=1"):
        with pytest.raises(ValueError, match="DIST_PEAKD_FAULT_INJECT"):
            parse_faults(bad)
