"""Exact checkpoints of an :class:`~dist_peakd.engine.engine.Engine`: save, select, load, prune.

Layout under a checkpoint root (``<stage>/checkpoints``)::

    <tag>/            DeepSpeed's files (model, optimizer, scheduler) + rng_rank<r>.pt + COMPLETE
    latest            the tag of the newest complete checkpoint (replaced last)

``COMPLETE`` (written last, by rank 0) records the global step and the size and sha256 of every
file; a folder without it is an interrupted save and never a candidate, and one whose ``COMPLETE``
lists no files cannot be verified and is refused (``--trust_unverified`` accepts it). A resume takes
the newest intact checkpoint: a corrupted one is reported and set aside as ``.corrupt-<tag>``.
Every file is read with :func:`.safe_checkpoint.safe_load` (``weights_only=True``): nothing in a
checkpoint folder can run code; the loop state is plain JSON values, the RNG states are tensors.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from .. import console
from ..artifacts import atomic_write_text, publish_dir, write_error
from ..errors import ArtifactWriteError, CheckpointCorruptError
from ..integrity import manifest_problems, write_manifest
from .distributed import DistInfo, barrier, is_collective_failure
from .rng import rng_state, set_rng_state
from .safe_checkpoint import durable_save, safe_load


class Engine(Protocol):
    """What a checkpoint needs of :class:`~dist_peakd.engine.engine.Engine` (a protocol: no import of it, no cycle)."""

    ds: Any  # the DeepSpeed engine
    dist: DistInfo
    global_step: int

LATEST_FILE = "latest"
COMPLETE_FILE = "COMPLETE"


# ------------------------------------------------------------------------------------ inspect
def checkpoint_problems(folder: str | Path, trust_unverified: bool = False) -> list[tuple[Path, str]]:
    """Problems of one checkpoint folder: no COMPLETE marker, no file list in it (unless
    ``trust_unverified``), or files that fail their size/sha256."""
    folder = Path(folder)
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        return [(marker, "missing (the checkpoint was never completed)")]
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return [(marker, f"unreadable ({e})")]
    if not isinstance(record, dict):
        return [(marker, "not a checkpoint record")]
    files = record.get("files")
    if not isinstance(files, dict):
        if trust_unverified:
            return []
        return [(marker, "lists no files, so the checkpoint cannot be verified (written by an older version, "
                         "or edited); pass --trust_unverified to load it unchecked")]
    return manifest_problems(folder, files)


def _checkpoint_step(folder: Path) -> int:
    try:
        return int(json.loads((folder / COMPLETE_FILE).read_text()).get("global_step", -1))
    except (OSError, ValueError, AttributeError):
        return -1


def complete_checkpoints(root: str | Path) -> list[str]:
    """Tags under ``root`` that have a COMPLETE marker, newest (highest step, then mtime) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    tags = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / COMPLETE_FILE).is_file()]
    tags.sort(key=lambda p: (_checkpoint_step(p), (p / COMPLETE_FILE).stat().st_mtime), reverse=True)
    return [p.name for p in tags]


def _candidates(root: Path) -> tuple[list[str], list[str]]:
    """Complete tags, the one named by ``latest`` first, and a warning when ``latest`` is stale."""
    latest = root / LATEST_FILE
    named = latest.read_text().strip() if latest.is_file() else None
    candidates = complete_checkpoints(root)
    if named in candidates:
        return [named] + [t for t in candidates if t != named], []
    if named:
        return candidates, [f"{latest} names {root / named}, which has no COMPLETE marker (an interrupted "
                            "save); using the newest complete checkpoint instead"]
    return candidates, []


def _quarantine(root: Path, bad_tags: Iterable[str], chosen: str) -> None:
    for bad_tag in bad_tags:
        target = root / f".corrupt-{bad_tag}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(root / bad_tag, target)
    atomic_write_text(root / LATEST_FILE, chosen)


def select_checkpoint(root: str | Path, quarantine: bool = False, trust_unverified: bool = False
                      ) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint under ``root`` and warnings about corrupted newer ones.

    Tries the tag in ``root/latest`` first, then every other complete tag, newest first; each is
    checked against the sizes and sha256 recorded in its COMPLETE marker. Folders without a
    COMPLETE marker (an interrupted save) and ``.tmp-*`` folders are never candidates. With ``quarantine``,
    corrupted ones are renamed ``.corrupt-<tag>`` (kept for inspection, never loaded again) and
    ``latest`` is pointed at the chosen tag. Raises :class:`CheckpointCorruptError` naming the
    bad files when checkpoints exist but none is intact; returns ``(None, [])`` when none exist.
    """
    root = Path(root)
    candidates, warnings = _candidates(root)
    bad: list[tuple[str, list[tuple[Path, str]]]] = []
    for tag in candidates:
        problems = checkpoint_problems(root / tag, trust_unverified)
        if not problems:
            if bad and quarantine:
                _quarantine(root, [t for t, _ in bad], tag)
            return tag, warnings
        bad.append((tag, problems))
        warnings.append(f"checkpoint {root / tag} is corrupted: "
                        + "; ".join(f"{path}: {problem}" for path, problem in problems)
                        + (" -- falling back to an older checkpoint" if tag != candidates[-1] else ""))
    if bad:
        path, problem = bad[0][1][0]
        raise CheckpointCorruptError(path, f"{problem}; no intact checkpoint under {root} ("
                                     + "; ".join(warnings) + "); delete the folder to start over")
    return None, []


def resume_step(root: str | Path, trust_unverified: bool = False) -> int:
    """The global step a resume from ``root`` starts after: that of the newest intact checkpoint (0: none)."""
    try:
        tag, _ = select_checkpoint(root, trust_unverified=trust_unverified)
    except CheckpointCorruptError:
        return 0
    return max(0, _checkpoint_step(Path(root) / tag)) if tag else 0


# ------------------------------------------------------------------------------------ save / load
def save_checkpoint(engine: Engine, root: str | Path, tag: str, client_state: dict[str, Any]) -> Path:
    """Save model, optimizer, scheduler, per-rank RNG and ``client_state`` under ``root/tag``.

    Every rank writes into ``root/.tmp-tag``; rank 0 then records the size and sha256 of every
    file in ``.tmp-tag/COMPLETE``, renames the folder to ``tag`` (replacing an older one of the
    same name without a gap) and replaces ``root/latest`` last, so an interrupted or failed save
    never hides the previous good checkpoint. A failed write (e.g. ENOSPC) raises
    :class:`ArtifactWriteError` naming the path; nothing of it becomes visible. Collective.
    """
    root = Path(root)
    tmp_tag = f".tmp-{tag}"
    tmp = root / tmp_tag
    is_main = engine.dist.is_main
    if is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, root, "checkpoint folder") from e
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    # plain JSON values only: the loop state loads with weights_only=True
    state = json.loads(json.dumps(dict(client_state, global_step=engine.global_step)))
    try:
        engine.ds.save_checkpoint(str(root), tag=tmp_tag, client_state=state, save_latest=False)
        durable_save(rng_state(), tmp / f"rng_rank{engine.dist.rank}.pt")
    except Exception as e:  # ENOSPC surfaces as OSError, or RuntimeError from torch's zip writer
        if is_collective_failure(e):
            _abandon(tmp, is_main)
            raise  # a peer died or timed out during the save: exit 5, not a write failure
        error = _write_error(e, root / tag, tmp)
        _abandon(tmp, is_main)
        raise error from e
    barrier()
    if is_main:
        _publish(root, tag, tmp, engine.global_step)
    barrier()
    return root / tag


def _publish(root: Path, tag: str, tmp: Path, global_step: int) -> None:
    """Rank 0: COMPLETE marker with every file's size and sha256, then the folder, then ``latest``."""
    try:
        write_manifest(tmp, COMPLETE_FILE, global_step=global_step, tag=tag)
        publish_dir(tmp, root / tag)
        atomic_write_text(root / LATEST_FILE, tag)
    except Exception as e:
        error = _write_error(e, root / tag, tmp)
        _abandon(tmp, True)
        raise error from e


def _write_error(e: Exception, final: Path, tmp: Path) -> ArtifactWriteError:
    """The write failure of checkpoint ``final`` (written in ``tmp``, which the caller removes)."""
    return write_error(e, final, "checkpoint", f"nothing was published and {final.parent / LATEST_FILE} still "
                                               "names the previous checkpoint")


def _abandon(tmp: Path, is_main: bool) -> None:
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(engine: Engine, root: str | Path, tag: str | None = None) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote (newest intact tag by default); returns the client state."""
    root = Path(root)
    if tag is None:
        tag, warnings = select_checkpoint(root)
        for w in warnings:
            console.warn(w)
    if tag is None:
        raise FileNotFoundError(f"no complete checkpoint under {root} (missing {root / LATEST_FILE})")
    path, client_state = engine.ds.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
    rng_file = root / tag / f"rng_rank{engine.dist.rank}.pt"
    if rng_file.is_file():
        set_rng_state(safe_load(rng_file))
    engine.global_step = int(client_state.get("global_step", 0))
    return client_state


def prune_checkpoints(root: str | Path, keep: int, is_main: bool = True) -> None:
    """Rank 0: keep the ``keep`` newest complete checkpoints under ``root``; delete the other tags and
    leftovers of interrupted saves (``.tmp-*``, ``.old-*``)."""
    root = Path(root)
    if not is_main or not root.is_dir():
        return
    keep_set = set(complete_checkpoints(root)[:max(1, keep)])
    for child in root.iterdir():
        if not child.is_dir():
            continue
        leftover = child.name.startswith((".tmp-", ".old-"))
        if leftover or (not child.name.startswith(".") and child.name not in keep_set):
            shutil.rmtree(child, ignore_errors=True)
