"""Teacher cache: logits and per-layer [CLS] states of the fine-tuned teacher, keyed by example id."""

from ..errors import CacheCorruptError, CacheMismatchError
from .store import (
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    UNLABELED_SPLIT,
    CacheSplit,
    TeacherCache,
    bytes_per_row,
    cache_fingerprint,
    manifest_differences,
    read_manifest,
    teacher_fingerprint,
)
from .writer import ShardWriter, build_manifest, write_manifest, write_shard

__all__ = [
    "FORMAT_VERSION",
    "IDENTITY_FIELDS",
    "UNLABELED_SPLIT",
    "CacheCorruptError",
    "CacheMismatchError",
    "CacheSplit",
    "ShardWriter",
    "TeacherCache",
    "build_manifest",
    "bytes_per_row",
    "cache_fingerprint",
    "manifest_differences",
    "read_manifest",
    "teacher_fingerprint",
    "write_manifest",
    "write_shard",
]
