"""LengthGroupedBatchSampler: coverage across simulated ranks, determinism, rank independence,
resume, length grouping and argument validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_peakd.data import LengthGroupedBatchSampler
from dist_peakd.data.sampler import length_run_batches, rank_share


def _lengths(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 129, size=n).tolist()


def _rank_steps(lengths, num_replicas, epoch=0, **kw) -> list[list[list[int]]]:
    """steps[rank][step] = that rank's share, for every simulated rank."""
    out = []
    for rank in range(num_replicas):
        s = LengthGroupedBatchSampler(lengths, num_replicas=num_replicas, rank=rank, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def _check_cover(lengths, global_batch_size, num_replicas, **kw):
    steps = _rank_steps(lengths, num_replicas, global_batch_size=global_batch_size, **kw)
    n_steps = -(-len(lengths) // global_batch_size)
    assert all(len(r) == n_steps for r in steps)  # every rank takes the same number of steps
    flat = [i for r in steps for share in r for i in share]
    assert sorted(flat) == list(range(len(lengths)))  # each example exactly once, none dropped
    ref = LengthGroupedBatchSampler(lengths, global_batch_size, **kw).global_batches(0)
    for step in range(n_steps):
        shares = [steps[r][step] for r in range(num_replicas)]
        sizes = [len(x) for x in shares]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert sum(shares, []) == ref[step]  # contiguous parts of the global batch, in rank order
    return steps


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 33, 64, 65, 101, 257])
@pytest.mark.parametrize("global_batch_size", [1, 2, 4, 8, 32])
@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize(("shuffle", "group"), [(True, True), (True, False), (False, True), (False, False)])
def test_every_example_once_across_ranks(n, global_batch_size, num_replicas, shuffle, group):
    _check_cover(_lengths(n), global_batch_size, num_replicas, shuffle=shuffle, group_by_length=group,
                 mega_batch_factor=2)


def test_two_ranks_disjoint_union_all():
    lengths = _lengths(101)
    r0, r1 = _rank_steps(lengths, 2, epoch=3, global_batch_size=8, seed=7)
    a = {i for s in r0 for i in s}
    b = {i for s in r1 for i in s}
    assert a.isdisjoint(b) and a | b == set(range(101))


def test_remainder_smaller_than_ranks_gives_empty_share():
    # 9 rows, global batch 4: batches 4, 4, 1 -> at the last step rank 1 has nothing
    lengths = _lengths(9)
    r0, r1 = _check_cover(lengths, 4, 2, shuffle=True, seed=1)
    assert [len(s) for s in r0] == [2, 2, 1]
    assert [len(s) for s in r1] == [2, 2, 0] and r1[-1] == []
    # 3 ranks, 2 rows in the last batch: ranks 0 and 1 get one each, rank 2 nothing
    steps = _check_cover(_lengths(10), 4, 3)
    assert [len(steps[r][-1]) for r in range(3)] == [1, 1, 0]


def test_last_global_batch_is_the_partial_one():
    s = LengthGroupedBatchSampler(_lengths(1000), 64, seed=3, mega_batch_factor=4)
    for epoch in range(3):
        sizes = [len(b) for b in s.global_batches(epoch)]
        assert sizes[:-1] == [64] * 15 and sizes[-1] == 1000 - 15 * 64


def test_deterministic_for_seed_and_epoch():
    lengths = _lengths(500)
    a = LengthGroupedBatchSampler(lengths, 16, seed=11)
    b = LengthGroupedBatchSampler(lengths, 16, seed=11)
    assert a.global_batches(4) == b.global_batches(4)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) == a.global_batches(2)
    assert a.global_batches(0) != a.global_batches(1)  # epochs differ
    assert a.global_batches(0) != LengthGroupedBatchSampler(lengths, 16, seed=12).global_batches(0)
    # numpy.random.default_rng([seed, epoch]) drives the permutation
    ungrouped = LengthGroupedBatchSampler(lengths, 16, seed=11, group_by_length=False)
    perm = np.random.default_rng([11, 5]).permutation(500).tolist()
    assert sum(ungrouped.global_batches(5), []) == perm


@pytest.mark.parametrize("group", [True, False])
def test_global_batches_independent_of_ranks(group):
    lengths = _lengths(333)
    one = LengthGroupedBatchSampler(lengths, 32, num_replicas=1, rank=0, seed=5, group_by_length=group)
    one.set_epoch(1)
    for rank in range(2):
        two = LengthGroupedBatchSampler(lengths, 32, num_replicas=2, rank=rank, seed=5, group_by_length=group)
        assert two.global_batches(1) == one.global_batches(1)
        assert len(two) == len(one) == 11
    # a 1-rank run iterates exactly the global batches; a 2-rank run splits the same ones
    steps = _rank_steps(lengths, 2, epoch=1, global_batch_size=32, seed=5, group_by_length=group)
    assert [a + b for a, b in zip(*steps, strict=True)] == list(one)


def _padding(lengths: np.ndarray, batches: list[list[int]]) -> int:
    return int(sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches if b))


def test_length_grouping_reduces_padding():
    lengths = np.asarray(_lengths(4000, seed=2))
    grouped = LengthGroupedBatchSampler(lengths.tolist(), 32, seed=0, mega_batch_factor=50)
    random = LengthGroupedBatchSampler(lengths.tolist(), 32, seed=0, group_by_length=False)
    pg, pr = _padding(lengths, grouped.global_batches(0)), _padding(lengths, random.global_batches(0))
    assert pg < 0.2 * pr
    # and per rank (what each device actually pads)
    for rank in range(2):
        s = LengthGroupedBatchSampler(lengths.tolist(), 32, num_replicas=2, rank=rank)
        r = LengthGroupedBatchSampler(lengths.tolist(), 32, num_replicas=2, rank=rank, group_by_length=False)
        assert _padding(lengths, list(s)) < 0.2 * _padding(lengths, list(r))


def test_no_shuffle_orders():
    lengths = [5, 9, 9, 2, 7]
    seq = LengthGroupedBatchSampler(lengths, 2, shuffle=False, group_by_length=False)
    assert seq.global_batches(0) == [[0, 1], [2, 3], [4]] == seq.global_batches(1)
    by_len = LengthGroupedBatchSampler(lengths, 2, shuffle=False)
    assert by_len.global_batches(0) == [[1, 2], [4, 0], [3]]


def test_longest_first():
    lengths = _lengths(300)
    s = LengthGroupedBatchSampler(lengths, 16, seed=4, longest_first=True)
    first = s.global_batches(0)[0]
    assert max(lengths[i] for i in first) == max(lengths)
    assert sorted(sum(s.global_batches(0), [])) == list(range(300))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(global_batch_size=0), "global_batch_size"),
    (dict(global_batch_size=-3), "global_batch_size"),
    (dict(global_batch_size=2.5), "global_batch_size"),
    (dict(global_batch_size=4, num_replicas=0), "num_replicas"),
    (dict(global_batch_size=4, num_replicas=2, rank=2), "rank"),
    (dict(global_batch_size=4, rank=-1), "rank"),
    (dict(global_batch_size=4, mega_batch_factor=0), "mega_batch_factor"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LengthGroupedBatchSampler([3, 4, 5], **kwargs)


def test_invalid_lengths():
    with pytest.raises(ValueError, match="non-negative"):
        LengthGroupedBatchSampler([3, -1], 2)
    with pytest.raises(ValueError, match="integers"):
        LengthGroupedBatchSampler([3.5, 1.0], 2)
    with pytest.raises(ValueError, match="1-D"):
        LengthGroupedBatchSampler([[1, 2]], 2)


def test_empty_dataset():
    s = LengthGroupedBatchSampler([], 4)
    assert len(s) == 0 and list(s) == [] and s.global_batches(0) == []


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 300), batch=st.integers(1, 40), replicas=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       epoch=st.integers(0, 1000), factor=st.integers(1, 8), shuffle=st.booleans(), group=st.booleans())
def test_property_exactly_once(n, batch, replicas, seed, epoch, factor, shuffle, group):
    lengths = _lengths(n, seed=seed % 1000)
    seen = []
    for rank in range(replicas):
        s = LengthGroupedBatchSampler(lengths, batch, num_replicas=replicas, rank=rank, seed=seed, shuffle=shuffle,
                                      group_by_length=group, mega_batch_factor=factor)
        s.set_epoch(epoch)
        shares = list(s)
        assert len(shares) == len(s)
        seen += [i for share in shares for i in share]
    assert sorted(seen) == list(range(n))


# ----------------------------------------------------------------- inference batches (the teacher-cache pass)
def test_length_run_batches_golden():
    # sorted (descending, stable): rows 3,5 (len 9), 0,2,6 (len 7), 1,4,7,8,9 (len 3)
    lengths = [7, 3, 7, 9, 3, 9, 7, 3, 3, 3]
    assert length_run_batches(lengths, 4) == [[3, 5], [0, 2, 6], [1, 4, 7, 8], [9]]
    # the run of length 9 (2 rows) is below half of 6 rows: it is batched with the next length
    assert length_run_batches(lengths, 6) == [[3, 5, 0, 2, 6], [1, 4, 7, 8, 9]]
    assert length_run_batches(lengths, 6, min_fill=1.0) == [[3, 5, 0, 2, 6, 1], [4, 7, 8, 9]]
    assert length_run_batches(lengths, 100) == [[3, 5, 0, 2, 6, 1, 4, 7, 8, 9]]


@pytest.mark.parametrize("max_rows", [1, 2, 7, 64, 1000])
def test_length_run_batches_cover_every_row_once_in_length_order(max_rows):
    lengths = np.random.default_rng(max_rows).integers(1, 40, size=997)
    batches = length_run_batches(lengths, max_rows)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert flat == np.argsort(-lengths, kind="stable").tolist()
    floor = int(np.ceil(0.5 * max_rows))
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert len(b) <= max_rows
        mixed = len(set(lengths[b].tolist())) > 1
        assert len(b) >= floor or not mixed  # a short batch is a whole run of one length
        if len(b) < max_rows:  # it ended early: the next batch starts on a new length
            assert lengths[nxt[0]] != lengths[b[-1]]


def test_length_run_batches_share_over_ranks_like_the_sampler():
    lengths = np.random.default_rng(3).integers(1, 9, size=101)
    for b in length_run_batches(lengths, 16):
        parts = [rank_share(b, 3, r) for r in range(3)]
        assert [i for p in parts for i in p] == b
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_length_run_batches_invalid_arguments():
    with pytest.raises(ValueError, match="max_rows must be an int >= 1 or a function"):
        length_run_batches([1, 2], 0)
    with pytest.raises(ValueError, match=r"min_fill must be in \[0, 1\]"):
        length_run_batches([1, 2], 4, min_fill=1.5)
    assert length_run_batches([], 4) == []


def test_length_run_batches_with_a_budget_per_length():
    lengths = [50] * 10 + [5] * 100
    # 1000 tokens per batch: up to 20 rows of length 50, of which there are 10 (half the cap: a batch of
    # their own); then up to 200 rows of length 5: all 100 in one batch
    batches = length_run_batches(lengths, lambda longest: 1000 // longest)
    assert [len(b) for b in batches] == [10, 100]
    # 400 tokens: 8 rows of 50; the 2 left are below half of 8, so they share a batch (capped by its
    # longest row, 50) with 6 rows of length 5; then 80 and the last 14 rows of length 5
    batches = length_run_batches(lengths, lambda longest: 400 // longest)
    assert [len(b) for b in batches] == [8, 8, 80, 14]
    assert [sorted({lengths[i] for i in b}) for b in batches] == [[50], [5, 50], [5], [5]]
    with pytest.raises(ValueError, match=r"max_rows\(50\) must be >= 1"):
        length_run_batches(lengths, lambda longest: 0)
