"""Tokenization of GLUE ``DatasetDict``s with an on-disk cache keyed by data and tokenizer identity."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import DatasetDict, Features, List, Value, load_from_disk

from .. import console
from ..artifacts import publish_dir, writing
from ..errors import ArtifactCorruptError
from ..integrity import verify_folder, write_export_manifest

logger = logging.getLogger(__name__)

#: Bumped whenever the tokenized format changes; part of the cache key.
TOKENIZE_FORMAT_VERSION = "tok-v1"

_TOKEN_COLUMNS = ("idx", "label", "input_ids", "token_type_ids", "length")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 identifying what a tokenizer produces.

    For fast tokenizers: the class name, ``truncation_side`` and the serialized backend
    (``backend_tokenizer.to_str()``) minus its mutable ``truncation``/``padding`` state (which
    changes whenever the tokenizer is called with other truncation settings). Otherwise: class name,
    sorted vocabulary, lower-casing flag and special tokens.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(f"\0{getattr(tokenizer, 'truncation_side', 'right')}\0".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True, ensure_ascii=False).encode())
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
        h.update(f"\0{getattr(tokenizer, 'do_lower_case', None)}\0".encode())
        h.update(json.dumps(getattr(tokenizer, "all_special_tokens", []), ensure_ascii=False).encode())
    return h.hexdigest()


def _cache_key(dsdict: DatasetDict, tok_fp: str, max_length: int, is_pair: bool, data_fp: str) -> str:
    payload = {
        "format": TOKENIZE_FORMAT_VERSION,
        "data": data_fp,
        "tokenizer": tok_fp,
        "max_length": max_length,
        "is_pair": is_pair,
        "splits": {name: ds.num_rows for name, ds in sorted(dsdict.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _features(label_feature: Any) -> Features:
    return Features({
        "idx": Value("int64"),
        "label": label_feature,
        "input_ids": List(Value("int32")),
        "token_type_ids": List(Value("int8")),
        "length": Value("int32"),
    })


def tokenize_dataset(dsdict: DatasetDict, tokenizer: Any, max_length: int, cache_dir: str | Path,
                     data_fingerprint: str, is_pair: bool | None = None,
                     in_memory: bool = True) -> tuple[DatasetDict, bool]:
    """Tokenize every split of a :func:`~.readers.load_glue` ``DatasetDict``; returns ``(tokenized, cache_hit)``.

    Output columns: ``idx``, ``label``, ``input_ids``, ``token_type_ids``, ``length`` (token count
    including special tokens). Sequences are truncated to ``max_length`` (pairs ``longest_first``)
    and not padded (see :class:`~.collate.DynamicPaddingCollator`). ``is_pair`` defaults to "some
    ``text_b`` in some split is non-empty"; pair tasks are always encoded as pairs, even where a
    ``text_b`` is empty.

    The result is cached under ``cache_dir/<key>/`` (``save_to_disk``), with ``key`` the sha256 of
    ``data_fingerprint``, :func:`tokenizer_fingerprint`, ``max_length``, ``is_pair``, split sizes and
    a format version. It is written to a temporary folder and renamed into place, so an interrupted
    run never leaves a partial cache; a hit is loaded with ``load_from_disk`` without tokenizing.
    ``in_memory=False`` (large splits, e.g. the unlabeled pool): tokenized into Arrow files on disk, batch
    by batch, instead of in memory.
    """
    _check_inputs(dsdict, max_length, data_fingerprint)
    if is_pair is None:
        is_pair = any(any(t != "" for t in ds.unique("text_b")) for ds in dsdict.values())
    key = _cache_key(dsdict, tokenizer_fingerprint(tokenizer), max_length, is_pair, data_fingerprint)
    final = Path(cache_dir) / key
    cached = _open_cached(final)
    if cached is not None:
        return cached, True
    if in_memory:
        _save(_tokenize_splits(dsdict, tokenizer, max_length, is_pair, key), Path(cache_dir), final)
        return load_from_disk(str(final)), False
    with writing(cache_dir, "tokenization cache"):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".map-{key[:16]}-", dir=cache_dir))
    try:
        _save(_tokenize_splits(dsdict, tokenizer, max_length, is_pair, key, work), Path(cache_dir), final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_from_disk(str(final)), False


def _check_inputs(dsdict: DatasetDict, max_length: int, data_fingerprint: str) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if not data_fingerprint:
        raise ValueError("data_fingerprint must be a non-empty string (see data.data_fingerprint)")
    for name, ds in dsdict.items():
        missing = {"idx", "text_a", "text_b", "label"} - set(ds.column_names)
        if missing:
            raise ValueError(f"split {name!r} lacks column(s) {sorted(missing)}; expected a load_glue DatasetDict")


def _open_cached(final: Path) -> DatasetDict | None:
    """The cached tokenization in ``final``, verified against its file manifest; None when there is none.

    A folder without a manifest (an older version's, or a foreign one) is not a cache: None (it is
    rebuilt beside and swapped in). A listed file that is missing or has other bytes is refused
    (:class:`~dist_peakd.errors.ArtifactCorruptError` naming it, exit 4): a run never trains on it.
    """
    if not final.is_dir():
        return None
    try:
        verified = verify_folder(final, required=False, what="tokenization cache")
    except ArtifactCorruptError as e:
        raise ArtifactCorruptError(e.path, f"{e.problem} (tokenization cache; delete {final} and rerun: it is "
                                   "rebuilt)") from None
    if not verified:
        logger.warning("tokenization cache %s has no file manifest; rebuilding it", final)
        return None
    try:
        return load_from_disk(str(final))
    except Exception as e:  # verified bytes that datasets cannot read: a foreign folder
        raise ArtifactCorruptError(final, f"unreadable tokenization cache ({type(e).__name__}: {e}); delete it "
                                   "and rerun: it is rebuilt") from e


def _encoder(tokenizer: Any, max_length: int, is_pair: bool) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batched ``map`` function: texts -> token ids (truncated, unpadded), ids and labels kept."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch["text_a"],
            batch["text_b"] if is_pair else None,
            truncation="longest_first" if is_pair else True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=True,
        )
        ids = enc["input_ids"]
        return {
            "idx": batch["idx"],
            "label": batch["label"],
            "input_ids": ids,
            "token_type_ids": enc["token_type_ids"],
            "length": [len(x) for x in ids],
        }

    return encode


def _tokenize_splits(dsdict: DatasetDict, tokenizer: Any, max_length: int, is_pair: bool, key: str,
                     work: Path | None = None) -> DatasetDict:
    """Every split tokenized: in memory, or (``work``: a scratch folder) into Arrow files there."""
    encode = _encoder(tokenizer, max_length, is_pair)
    out = {}
    for name, ds in dsdict.items():
        on_disk = {} if work is None else {"cache_file_name": str(work / f"{name}.arrow")}
        out[name] = ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=ds.column_names,
            features=_features(ds.features["label"]),
            keep_in_memory=work is None,
            **on_disk,
            new_fingerprint=hashlib.sha256(f"{key}\0{name}".encode()).hexdigest()[:32],
            desc=f"tokenizing {name}",
        ).select_columns(list(_TOKEN_COLUMNS))
    return DatasetDict(out)


def _save(tokenized: DatasetDict, cache_dir: Path, final: Path) -> None:
    """Write beside ``final``, record every file's sha256, then rename (or swap) it into place."""
    with writing(cache_dir, "tokenization cache"):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:16]}-", dir=cache_dir))
        try:
            with console.datasets_bars_off():
                tokenized.save_to_disk(str(tmp / "data"))
            write_export_manifest(tmp / "data")
            if final.is_dir():  # an unverifiable older folder: replace it in one step
                publish_dir(tmp / "data", final)
            else:
                try:
                    os.replace(tmp / "data", final)
                except OSError:
                    if not final.is_dir():  # not a lost race with another writer of the same key
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
