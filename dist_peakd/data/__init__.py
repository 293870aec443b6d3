"""GLUE data layer: task registry, strict TSV/hub readers, cached tokenization, collation, sampling."""

from .collate import DynamicPaddingCollator
from .errors import DataError, DataLayoutError, EncodingError, LabelError, MalformedRowError, UnknownTaskError
from .readers import (
    data_fingerprint,
    default_glue_dir,
    file_sha256,
    glue_features,
    load_glue,
    read_glue_tsv,
    split_paths,
)
from .sampler import LengthGroupedBatchSampler
from .tasks import TASKS, GlueTask, get_task
from .tokenize import tokenize_dataset, tokenizer_fingerprint

__all__ = [
    "TASKS",
    "DataError",
    "DataLayoutError",
    "DynamicPaddingCollator",
    "EncodingError",
    "GlueTask",
    "LabelError",
    "LengthGroupedBatchSampler",
    "MalformedRowError",
    "UnknownTaskError",
    "data_fingerprint",
    "default_glue_dir",
    "file_sha256",
    "get_task",
    "glue_features",
    "load_glue",
    "read_glue_tsv",
    "split_paths",
    "tokenize_dataset",
    "tokenizer_fingerprint",
]
