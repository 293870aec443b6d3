"""PTP (Pretraining with Teacher's Predictions): 4-way labels from the cached teacher logits.

``p = softmax(teacher_logits)`` (no temperature, float64); ``conf = max p``; ``correct = argmax == gold``;
label 0 = correct & conf > t1, 1 = correct & conf <= t1, 2 = wrong & conf > t2, 3 = wrong & conf <= t2
(strict ``>``). Classification tasks only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAPER_THRESHOLDS: dict[str, tuple[float, float]] = {
    "rte": (0.80, 0.60),
    "mrpc": (0.95, 0.75),
    "sst2": (0.98, 0.80),
    "qnli": (0.98, 0.70),
    "cola": (0.95, 0.70),
}
PTP_RULES = ("median", "paper")
PTP_CLASS_NAMES = ("confident_correct", "unconfident_correct", "confident_wrong", "unconfident_wrong")
NUM_PTP_CLASSES = len(PTP_CLASS_NAMES)


@dataclass
class PTPThresholds:
    """Thresholds used (t1 for correct, t2 for wrong predictions), the rule, and the set sizes."""

    t1: float
    t2: float
    rule: str
    n_correct: int
    n_wrong: int


def _normalise_task(task: str) -> str:
    return task.lower().replace("-", "").replace("_", "")


def _confidence(teacher_logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(conf, correct)`` per example: float64 softmax max and ``argmax == label``."""
    logits = np.asarray(teacher_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"PTP is defined for classification tasks only (teacher logits of shape "
                         f"{logits.shape}; need [N, num_classes >= 2]); regression tasks have no 'correct'")
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {logits.shape[0]} teacher logits")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(labels == np.round(labels)):
            raise ValueError("PTP is defined for classification tasks only (labels are not integers)")
        labels = labels.astype(np.int64)
    if not np.all(np.isfinite(logits)):
        raise ValueError("teacher logits contain NaN or inf")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def ptp_thresholds(teacher_logits: np.ndarray, labels: np.ndarray, rule: str = "median",
                   task: str | None = None) -> PTPThresholds:
    """PTP thresholds by ``rule``.

    ``"median"`` (default): t1 = median confidence over correctly predicted examples, t2 = median over
    wrong ones. An empty set gives a threshold of 1.0 (with the strict ``>`` no example of that set
    can be "confident"; e.g. an always-right teacher gets t2 = 1.0). ``"paper"``: the reference
    code's constants for ``task`` (``PAPER_THRESHOLDS``; ``"SST-2"`` etc. are accepted).
    """
    conf, correct = _confidence(teacher_logits, labels)
    n_correct, n_wrong = int(correct.sum()), int((~correct).sum())
    if rule == "median":
        t1 = float(np.median(conf[correct])) if n_correct else 1.0
        t2 = float(np.median(conf[~correct])) if n_wrong else 1.0
    elif rule == "paper":
        key = _normalise_task(task) if task is not None else None
        if key not in PAPER_THRESHOLDS:
            raise ValueError(f"option ptp rule 'paper': no constants for task {task!r}; "
                             f"tasks with constants: {sorted(PAPER_THRESHOLDS)}")
        t1, t2 = PAPER_THRESHOLDS[key]
    else:
        raise ValueError(f"option ptp rule: {rule!r} is not one of {list(PTP_RULES)}")
    return PTPThresholds(t1=float(t1), t2=float(t2), rule=rule, n_correct=n_correct, n_wrong=n_wrong)


def ptp_labels(teacher_logits: np.ndarray, labels: np.ndarray,
               thresholds: PTPThresholds | tuple[float, float]) -> np.ndarray:
    """4-way PTP labels (int64 in {0, 1, 2, 3}; see the module docstring; strict ``>``)."""
    t1, t2 = (thresholds.t1, thresholds.t2) if isinstance(thresholds, PTPThresholds) else thresholds
    conf, correct = _confidence(teacher_logits, labels)
    return np.where(correct, np.where(conf > t1, 0, 1), np.where(conf > t2, 2, 3)).astype(np.int64)


def ptp_histogram(ptp: np.ndarray) -> dict[str, int]:
    """Count of each PTP class; all four keys are always present."""
    ptp = np.asarray(ptp).reshape(-1)
    if ptp.size and (ptp.min() < 0 or ptp.max() >= NUM_PTP_CLASSES):
        raise ValueError(f"PTP labels must be in 0..{NUM_PTP_CLASSES - 1}")
    counts = np.bincount(ptp.astype(np.int64), minlength=NUM_PTP_CLASSES)
    return {name: int(counts[i]) for i, name in enumerate(PTP_CLASS_NAMES)}
