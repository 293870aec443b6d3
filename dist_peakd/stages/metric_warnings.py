"""The dev metrics of a stage with their warnings (trivial baseline, degenerate predictions) beside them."""

from __future__ import annotations

from typing import Any

from .. import console
from ..data import Task


class MetricWarnings:
    """The dev metrics of a stage with :func:`~dist_peakd.metrics.metric_report`'s warnings beside them.

    ``metric_fn(task, to_metric_inputs)`` gives the trainer's metric function: it prints each new
    warning (rank 0) next to the eval line and keeps them, in order, in :attr:`seen`, which the
    stage puts in its summary (``metric_warnings``). :attr:`last_profile` is the latest evaluation's
    :func:`~dist_peakd.metrics.prediction_profile` (trivial baseline, class shares) for the model card;
    :attr:`baseline` (updated in place: the summary's ``baseline`` block) the latest evaluation against
    that baseline (:func:`~dist_peakd.metrics.compare_to_baseline`, ``teacher``: the teacher's dev
    metrics for the share of its gain kept). A latest evaluation at or below the baseline adds its
    warning to :attr:`seen` (printed at the stage's end, not at each evaluation; dropped when a later
    evaluation beats the baseline).
    """

    def __init__(self, teacher: dict[str, float] | None = None, quiet: bool = False) -> None:
        self.seen: list[str] = []
        self._quiet = quiet  # keep the warnings, print none (a measurement for a card, not a stage's eval)
        self.last_profile: dict[str, Any] | None = None  # the latest evaluation's, for the model card
        self.baseline: dict[str, Any] = {}
        self._teacher = teacher
        self._baseline_warning: str | None = None

    def report(self, task: Task, predictions: Any, labels: Any) -> dict[str, float]:
        from ..metrics import metric_report, prediction_profile

        report = metric_report(task, predictions, labels)
        try:  # the card's figures never stop a run
            self.last_profile = prediction_profile(task, predictions, labels)
        except ValueError:
            self.last_profile = None
        for warning in report.warnings:
            if not self._quiet:  # stdout, as the evaluation lines it belongs to
                console.info(f"warning: {warning}")
            if warning not in self.seen:
                self.seen.append(warning)
        self._compare(task, report.values)
        return report.values

    def _compare(self, task: Task, values: dict[str, float]) -> None:
        from ..metrics import baseline_warning, compare_to_baseline

        self.baseline.clear()
        if self._baseline_warning in self.seen:
            self.seen.remove(self._baseline_warning)
        profile = self.last_profile
        if not profile or task.main_metric not in values:
            return
        self.baseline.update(compare_to_baseline(task.main_metric, values,
                                                 {**profile["baseline"], "rows": profile["rows"]}, self._teacher))
        self._baseline_warning = baseline_warning(task.name, self.baseline)
        if self._baseline_warning and self._baseline_warning not in self.seen:
            self.seen.append(self._baseline_warning)
