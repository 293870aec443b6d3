"""Teacher cache: logits and per-layer [CLS] states of the fine-tuned teacher, keyed by example id."""

from ..errors import CacheCorruptError, CacheMismatchError
from .store import (
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    CacheSplit,
    TeacherCache,
    cache_fingerprint,
    manifest_differences,
    read_manifest,
    teacher_fingerprint,
)
from .writer import ShardWriter, build_manifest, write_manifest, write_shard

__all__ = [
    "FORMAT_VERSION",
    "IDENTITY_FIELDS",
    "CacheCorruptError",
    "CacheMismatchError",
    "CacheSplit",
    "ShardWriter",
    "TeacherCache",
    "build_manifest",
    "cache_fingerprint",
    "manifest_differences",
    "read_manifest",
    "teacher_fingerprint",
    "write_manifest",
    "write_shard",
]
