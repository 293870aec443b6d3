"""One home for "rank 0 decides, every rank raises" (``engine.distributed.decide_on_rank0``) and for what a
run prints (``console``: rank 0 only, ``[dist-peakd]`` prefix) (issue 26.3)."""

from __future__ import annotations

import pytest

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


def _two_ranks(monkeypatch, fn, *args):
    """``decide_on_rank0(fn, *args)`` as rank 0 and then as rank 1 of a 2-rank group: what rank 0 broadcasts
    (pickled, as ``broadcast_object_list`` does) is what rank 1 receives. Returns each rank's
    ``("value", v)`` or ``("raised", type name, text)`` and the ranks ``fn`` ran on. (A real 2-rank run of
    the same code: ``test_cache.py::test_two_rank_cache_equals_one_rank_cache``, under the launcher.)"""
    import pickle

    import torch.distributed as dist

    from dist_peakd.engine import distributed

    sent: list[bytes] = []
    ran: list[int] = []
    outcomes = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)

        def broadcast(obj, src=0, rank=rank):
            if rank == 0:
                sent.append(pickle.dumps(obj))
                return obj
            return pickle.loads(sent[0])

        monkeypatch.setattr(distributed, "broadcast_object", broadcast)

        def recorded(*a, rank=rank):
            ran.append(rank)
            return fn(*a)

        try:
            outcomes.append(("value", decide_on_rank0(recorded, *args)))
        except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
            outcomes.append(("raised", type(e).__name__, str(e)))
    return outcomes, ran


def test_rank0_decides_and_every_rank_gets_its_answer(monkeypatch):
    outcomes, ran = _two_ranks(monkeypatch, lambda a, b: {"action": "skip", "rows": a + b}, 40, 2)
    assert outcomes == [("value", {"action": "skip", "rows": 42})] * 2
    assert ran == [0]  # fn ran on rank 0 only


def test_rank0_decides_and_every_rank_raises_its_error(monkeypatch):
    outcomes, ran = _two_ranks(monkeypatch, _raise, ConfigError("option x: decided on rank 0"))
    assert outcomes == [("raised", "ConfigError", "option x: decided on rank 0")] * 2
    assert ran == [0]


def test_console_prints_on_rank0_only_with_the_prefix(monkeypatch, capsys):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # no process group: RANK says which rank
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
