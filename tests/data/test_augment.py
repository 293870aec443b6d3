"""--augment's text method (dist_peakd/data/augment.py): seeded, offline, word dropout + local swap."""

from __future__ import annotations

import numpy as np
import pytest

from dist_peakd.data.augment import augment_text

TEXT = "the film is a charming and often affecting journey through a small town"


def test_same_seed_same_variants_and_count():
    a = augment_text(TEXT, 4, np.random.default_rng(3))
    b = augment_text(TEXT, 4, np.random.default_rng(3))
    assert a == b and len(a) == 4
    assert augment_text(TEXT, 4, np.random.default_rng(4)) != a


def test_variants_differ_from_text_and_each_other_and_keep_only_its_words():
    words = TEXT.split()
    out = augment_text(TEXT, 6, np.random.default_rng(0))
    assert TEXT not in out and len(set(out)) == 6
    for v in out:
        vw = v.split()
        assert 1 <= len(vw) <= len(words)
        # only the text's own words (dropout removes, swap reorders; nothing is invented)
        assert all(vw.count(w) <= words.count(w) for w in vw)


def test_change_is_local():
    """~10% of words dropped, swaps only adjacent: most of the text survives in a variant."""
    words = [f"w{i}" for i in range(200)]
    v = augment_text(" ".join(words), 1, np.random.default_rng(1))[0].split()
    assert 150 <= len(v) < 200
    pos = {w: i for i, w in enumerate(words)}
    order = [pos[w] for w in v]
    # a word moves at most one place relative to the kept sequence
    assert all(abs(order.index(p) - sorted(order).index(p)) <= 1 for p in order)


def test_edge_cases():
    rng = np.random.default_rng(0)
    assert augment_text(TEXT, 0, rng) == []
    assert augment_text("", 2, rng) == ["", ""]
    one = augment_text("hello", 3, rng)
    assert one == ["hello"] * 3  # one word: dropout keeps it, nothing to swap
    with pytest.raises(ValueError, match="n must be >= 0"):
        augment_text(TEXT, -1, rng)
