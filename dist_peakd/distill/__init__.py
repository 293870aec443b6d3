"""Distillation: the Pea-KD loss terms and the PTP labelling functions."""

from .losses import (
    KL_REDUCTIONS,
    LOSS_TERMS,
    DistillLossConfig,
    ce_per_example,
    distillation_loss,
    kd_per_example,
    patient_layer_map,
    pt_per_example,
)
from .ptp import (
    PAPER_THRESHOLDS,
    PTP_CLASS_NAMES,
    PTP_RULES,
    PTPThresholds,
    ptp_histogram,
    ptp_labels,
    ptp_thresholds,
)

__all__ = [
    "KL_REDUCTIONS", "LOSS_TERMS", "PAPER_THRESHOLDS", "PTP_CLASS_NAMES", "PTP_RULES", "DistillLossConfig",
    "PTPThresholds", "ce_per_example", "distillation_loss", "kd_per_example", "patient_layer_map",
    "pt_per_example", "ptp_histogram", "ptp_labels", "ptp_thresholds",
]
