"""One home for "rank 0 decides, every rank raises" (``engine.distributed.decide_on_rank0``) and for what a
run prints (``console``: rank 0 only, ``[dist-peakd]`` prefix) (issue 26.3)."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp

from dist_peakd import console
from dist_peakd.engine.distributed import decide_on_rank0
from dist_peakd.errors import ConfigError


def test_a_single_process_decides_itself():
    assert decide_on_rank0(lambda a, b=0: a + b, 2, b=3) == 5
    error = ConfigError("option lr: -1 is not > 0")
    with pytest.raises(ConfigError) as raised:
        decide_on_rank0(_raise, error)
    assert raised.value is error  # rank 0 raises its own exception (traceback kept)


def _raise(error: Exception) -> None:
    raise error


def _ran_on(folder: str, rank: int, fail: bool) -> int:
    with open(f"{folder}/ran-{rank}", "w"):
        pass
    if fail:
        raise ConfigError(f"option x: decided on rank {rank}")
    return 40 + rank


def _rank_main(rank: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        out = {"value": decide_on_rank0(_ran_on, folder, rank, False)}
        try:
            decide_on_rank0(_ran_on, folder, rank, True)
        except ConfigError as e:
            out["error"] = [type(e).__name__, str(e)]
        with open(f"{folder}/out-{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_rank0_decides_and_every_rank_gets_the_answer_or_the_error(tmp_path):
    mp.start_processes(_rank_main, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    outs = [json.loads((tmp_path / f"out-{r}.json").read_text()) for r in (0, 1)]
    assert outs[0] == outs[1] == {"value": 40, "error": ["ConfigError", "option x: decided on rank 0"]}
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0"]  # fn ran on rank 0 only


def test_console_prints_on_rank0_only_with_the_prefix(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    console.info("cached 60 rows")
    console.warn("took over the lock")
    console.echo("| a | b |")
    out, err = capsys.readouterr()
    assert out == "[dist-peakd] cached 60 rows\n| a | b |\n"
    assert err == "[dist-peakd] warning: took over the lock\n"
    monkeypatch.setenv("RANK", "1")
    console.info("cached 60 rows")
    console.warn("took over the lock")
    console.echo("| a | b |")
    assert capsys.readouterr() == ("", "")
