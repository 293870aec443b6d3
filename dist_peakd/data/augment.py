"""``--augment N``: N cheap, offline, seeded variants of a text (word dropout + local swap).

Method (docs/UNLABELED.md, "Augmentation"): the text is split on whitespace into words; each
variant then

1. drops each word independently with probability ``DROP_P`` (at least one word is always kept),
2. swaps each remaining adjacent pair with probability ``SWAP_P`` (left to right, a swapped word
   is not swapped again), so word order changes only locally.

A variant equal to the original text (or to an earlier variant) is retried up to ``RETRIES`` times;
texts of one word, or where no other variant exists, may give repeats. The words are re-joined with
single spaces. Everything is drawn from the caller's ``numpy.random.Generator``: the same generator
state gives the same variants on every machine.

Why not masked-LM replacement (TinyBERT's method): it needs a checkpoint with an MLM head, and the
default backbone (sentence-transformers all-MiniLM-L6-v2) ships a bare ``BertModel`` without one;
an MLM pass would also cost one more model pass per variant. Word dropout/swap costs microseconds,
needs no model and no network, and the teacher (which labels every variant) absorbs the label
noise a destructive edit can cause: the variants are trained on the teacher's outputs only, never
on the original row's gold label.
"""

from __future__ import annotations

import numpy as np

DROP_P = 0.1
SWAP_P = 0.1
RETRIES = 5


def _one_variant(words: list[str], rng: np.random.Generator) -> list[str]:
    keep = rng.random(len(words)) >= DROP_P
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    out = [w for w, k in zip(words, keep, strict=True) if k]
    swaps = rng.random(max(len(out) - 1, 0)) < SWAP_P
    i = 0
    while i < len(out) - 1:
        if swaps[i]:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


def augment_text(text: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` variants of ``text`` (word dropout p=0.1 + adjacent swap p=0.1), drawn from ``rng``.

    ``n == 0`` gives ``[]``; an empty or whitespace-only text gives ``n`` copies of itself
    (nothing to vary). Variants differ from the text and from each other where possible
    (``RETRIES`` redraws each).
    """
    if n < 0:
        raise ValueError(f"augment: n must be >= 0, got {n}")
    words = text.split()
    if not words:
        return [text] * n
    original = " ".join(words)
    seen = {original}
    variants: list[str] = []
    for _ in range(n):
        candidate = original
        for _attempt in range(RETRIES + 1):
            candidate = " ".join(_one_variant(words, rng))
            if candidate not in seen:
                break
        seen.add(candidate)
        variants.append(candidate)
    return variants
