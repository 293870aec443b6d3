"""Data layer: task descriptions (GLUE and own data), strict readers, cached tokenization, collation, sampling.

Stages call :func:`load_data` (GLUE task or own files / hub dataset, validated, fingerprinted) and
:func:`tokenize_dataset`; see :class:`DataOptions` for the data options.
"""

from .collate import DynamicPaddingCollator
from .errors import (
    ColumnError,
    DataError,
    DataFileError,
    DataLayoutError,
    DataOptionError,
    DataValueError,
    EncodingError,
    LabelError,
    MalformedRowError,
    MaxLengthError,
    UnknownTaskError,
)
from .options import FILE_FORMATS, DataOptions, check_max_length, position_limit
from .own import LoadedData, check_data_record, data_record_differences, glue_task, load_data, split_names
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
from .split import carve_dev
from .tasks import (
    COMPATIBLE_METRICS,
    DEFAULT_METRICS,
    PROBLEMS,
    TASKS,
    GlueTask,
    Task,
    get_task,
    is_glue_name,
)
from .tokenize import tokenize_dataset, tokenizer_fingerprint

__all__ = [
    "COMPATIBLE_METRICS",
    "DEFAULT_METRICS",
    "FILE_FORMATS",
    "PROBLEMS",
    "TASKS",
    "ColumnError",
    "DataError",
    "DataFileError",
    "DataLayoutError",
    "DataOptionError",
    "DataOptions",
    "DataValueError",
    "DynamicPaddingCollator",
    "EncodingError",
    "GlueTask",
    "LabelError",
    "LengthGroupedBatchSampler",
    "LoadedData",
    "MalformedRowError",
    "MaxLengthError",
    "Task",
    "UnknownTaskError",
    "carve_dev",
    "check_data_record",
    "check_max_length",
    "data_fingerprint",
    "data_record_differences",
    "default_glue_dir",
    "file_sha256",
    "get_task",
    "glue_features",
    "glue_task",
    "is_glue_name",
    "load_data",
    "load_glue",
    "position_limit",
    "read_glue_tsv",
    "split_names",
    "split_paths",
    "tokenize_dataset",
    "tokenizer_fingerprint",
]
