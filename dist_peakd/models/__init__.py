"""Models: the teacher (any supported encoder family), the SPS student, and size/FLOP statistics.

Importing this package registers ``sps-bert`` and ``sps-family`` with ``AutoConfig`` and
``AutoModelForSequenceClassification``.
"""

from .errors import ModelConfigError
from .outputs import ClassifierOutput
from .sps import (
    VARIANTS,
    SPSBertConfig,
    SPSBertForSequenceClassification,
    SPSFamilyConfig,
    SPSFamilyForSequenceClassification,
    attention_scores,
    build_student,
    load_student,
    sps_layer_forward,
    sps_schedule,
)
from .stats import count_parameters, flops_per_token, model_stats
from .teacher import BERT_FAMILY, check_bert_family, load_teacher, teacher_forward

__all__ = [
    "BERT_FAMILY",
    "VARIANTS",
    "ClassifierOutput",
    "ModelConfigError",
    "SPSBertConfig",
    "SPSBertForSequenceClassification",
    "SPSFamilyConfig",
    "SPSFamilyForSequenceClassification",
    "attention_scores",
    "build_student",
    "check_bert_family",
    "count_parameters",
    "flops_per_token",
    "load_student",
    "load_teacher",
    "model_stats",
    "sps_layer_forward",
    "sps_schedule",
    "teacher_forward",
]
