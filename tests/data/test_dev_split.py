"""The carved dev split: exact size, per-class shares, determinism, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_peakd.data import DataOptionError, carve_dev
from dist_peakd.data.split import dev_size, ids_digest


@settings(max_examples=150, deadline=None)
@given(groups=st.lists(st.integers(0, 4), min_size=2, max_size=300), fraction=st.floats(0.01, 0.99),
       seed=st.integers(0, 2**31 - 1))
def test_stratified_shares(groups, fraction, seed):
    n = len(groups)
    dev = carve_dev(groups, n, fraction, seed)
    assert len(dev) == dev_size(n, fraction) == min(max(1, round(fraction * n)), n - 1)
    assert len(set(dev.tolist())) == len(dev) and np.all(np.diff(dev) > 0) and dev.min() >= 0 and dev.max() < n
    g = np.asarray(groups)
    counts, picked = np.bincount(g, minlength=5), np.bincount(g[dev], minlength=5)
    share = counts * len(dev) / n
    present = counts > 0
    if np.all(counts[present] - 1 >= np.ceil(share[present])):  # no class capped at "keep one train row"
        assert np.all(np.abs(picked - share) < 1)
    if len(dev) <= (counts[present] - 1).sum():  # every class can keep a train row, so it does
        assert np.all(counts[present] - picked[present] >= 1)
    assert np.array_equal(carve_dev(groups, n, fraction, seed), dev)


def test_every_class_keeps_a_train_row_when_it_can():
    groups = [0] * 97 + [1, 2, 3]
    dev = carve_dev(groups, 100, 0.5, 0)
    assert len(dev) == 50 and not {97, 98, 99} & set(dev.tolist())


def test_seed_changes_the_rows_and_regression_is_one_group():
    a, b = carve_dev(None, 1000, 0.1, 0), carve_dev(None, 1000, 0.1, 1)
    assert len(a) == len(b) == 100 and not np.array_equal(a, b)
    # golden values: the split must never change across numpy versions (RandomState's stream is frozen)
    assert carve_dev(None, 20, 0.25, 0).tolist() == [1, 8, 10, 18, 19]
    assert carve_dev([0] * 10 + [1] * 10, 20, 0.2, 0).tolist() == [2, 8, 13, 15]  # 2 per class
    assert ids_digest([1, 2, 3]) == ids_digest(np.array([1, 2, 3], dtype=np.int32)) != ids_digest([1, 2])


def test_too_small_train_split():
    with pytest.raises(DataOptionError, match="option dev_fraction: cannot carve a dev split from a train split of 1"):
        carve_dev([0], 1, 0.1, 0)
