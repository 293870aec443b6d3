"""A thin facade over a DeepSpeed engine: build, train step, evaluation, exact checkpoints, export."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fsutil import file_sha256, fsync_path
from .distributed import DistInfo, all_gather_objects, barrier, broadcast_object, init_distributed
from .ds_config import ConfigError, build_ds_config, config_precision, load_ds_config
from .faults import ArtifactCorruptError, ArtifactWriteError, CheckpointCorruptError
from .optim import build_optimizer, linear_warmup_decay

LATEST_FILE = "latest"
COMPLETE_FILE = "COMPLETE"
#: sha256 + size of every file of an export folder (written last, before the folder is published).
EXPORT_MANIFEST = "dist_peakd_files.json"
NAN_POLICIES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step, the rank(s) and the term(s)."""


@dataclass
class LossOutput:
    """What a stage's loss function returns for one micro-batch.

    ``total`` is the SUM over the micro-batch's examples of the weighted per-example loss (a scalar
    tensor with grad); ``terms`` holds each unweighted term's sum (detached) for logging; ``weights``
    the weight applied to each term (logged once per run).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    count: int
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineOptions:
    """Engine options that every stage shares (filled by the CLI)."""

    ds_config: str = "fp32_zero0"
    precision: str | None = None
    zero_stage: int | None = None
    batch_size: int = 32
    micro_batch_size: int | None = None
    gradient_clipping: float | None = 1.0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    nan_policy: str = "stop"  # non-finite loss: "stop" (raise NonFiniteLossError) or "skip" the step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file via a temporary sibling, fsync and ``os.replace``.

    On failure (e.g. ENOSPC) the temporary file is removed and the old ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------- file manifests
def file_manifest(folder: str | Path, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` (each fsynced first)."""
    folder = Path(folder)
    skip = set(exclude)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        fsync_path(path)
        out[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def manifest_problems(folder: str | Path, files: dict[str, dict[str, Any]]) -> list[tuple[Path, str]]:
    """``(file, problem)`` for every listed file that is missing, has another size or another sha256."""
    folder = Path(folder)
    problems: list[tuple[Path, str]] = []
    for rel, rec in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            problems.append((path, "missing"))
            continue
        size = path.stat().st_size
        if size != rec["bytes"]:
            problems.append((path, f"has {size} bytes, expected {rec['bytes']} (truncated or rewritten)"))
        elif file_sha256(path) != rec["sha256"]:
            problems.append((path, "sha256 differs from the recorded one (corrupted bytes)"))
    return problems


def verify_export(folder: str | Path) -> None:
    """Check an export folder against its ``dist_peakd_files.json``; ArtifactCorruptError names the file.

    Folders without the manifest (a hub backbone, an export from an older version) pass unchecked.
    """
    folder = Path(folder)
    manifest = folder / EXPORT_MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactCorruptError(manifest, f"unreadable file manifest ({e})") from e
    problems = manifest_problems(folder, files)
    if problems:
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more: {[str(p) for p, _ in problems[1:]]})" if len(problems) > 1 else ""
        raise ArtifactCorruptError(path, problem + more)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an existing ``final`` without a gap.

    With RENAME_EXCHANGE the swap is atomic; otherwise the old folder is first renamed aside
    (``.old-<name>``) and removed only after the new one is in place.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        if _rename_exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent)


def checkpoint_problems(folder: str | Path) -> list[tuple[Path, str]]:
    """Problems of one checkpoint folder: no COMPLETE marker, or files that fail their size/sha256."""
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
    if files is None:  # written by an older version: no file list to check
        return []
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


class Engine:
    """One DeepSpeed engine around ``model`` with a client AdamW and linear warmup/decay.

    Loss normalisation is exact across ranks and accumulation steps: each micro-batch's summed loss
    is divided by the number of examples in the whole global batch and multiplied by the world size
    (DeepSpeed averages gradients over ranks; accumulation scaling is turned off), so the gradient is
    the global-batch mean whatever the split, including a short last batch.
    """

    def __init__(self, model: nn.Module, options: EngineOptions, total_steps: int,
                 dist_info: DistInfo | None = None, train: bool = True) -> None:
        import deepspeed

        if options.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"option nan_policy: {options.nan_policy!r} is not one of {list(NAN_POLICIES)}")
        source = getattr(model, "name_or_path", None)
        if source and Path(str(source)).is_dir():
            verify_export(source)  # a corrupted export loaded by a stage is refused, naming the file
        self.dist = dist_info or init_distributed()
        self.options = options
        micro = options.micro_batch_size or max(1, options.batch_size // self.dist.world_size)
        base = load_ds_config(options.ds_config)
        self.ds_config = build_ds_config(
            base, micro_batch_size=micro, global_batch_size=options.batch_size,
            world_size=self.dist.world_size, precision=options.precision,
            zero_stage=options.zero_stage, gradient_clipping=options.gradient_clipping,
            on_gpu=self.dist.device.type == "cuda")
        self.precision = config_precision(self.ds_config)
        self.gradient_accumulation_steps = int(self.ds_config["gradient_accumulation_steps"])
        # ZeRO 0 with fp32 weights (plain fp32 or torch autocast): the engine clips with one fused
        # foreach norm instead of DeepSpeed's per-tensor loop (same result, far fewer kernel launches).
        zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self._own_clip = (train and zero_stage == 0 and self.precision in ("fp32", "bf16-autocast")
                          and float(self.ds_config.get("gradient_clipping", 0.0) or 0.0) > 0)
        self._max_grad_norm = float(self.ds_config.get("gradient_clipping", 0.0) or 0.0)
        if self._own_clip:
            self.ds_config["gradient_clipping"] = 0.0
        self.total_steps = total_steps
        model = model.to(self.dist.device)
        optimizer = scheduler = None
        if train:
            optimizer = build_optimizer(model, options.lr, options.weight_decay)
            scheduler = linear_warmup_decay(optimizer, total_steps, options.warmup_ratio)
        else:
            self.ds_config.pop("zero_optimization", None)
        self._client_optimizer = optimizer
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        if self.dist.world_size == 1 and self.ds.zero_optimization_stage() == 0:
            self.ds.enable_backward_allreduce = False  # nothing to average in a world of one
        self.global_step = 0

    # ------------------------------------------------------------------ properties
    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else 0.0

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far: non-finite losses under ``nan_policy=skip`` plus DeepSpeed's
        own overflow skips (fp16 dynamic loss scaling, non-finite gradient norms). Saved in checkpoints."""
        return int(getattr(self.ds, "skipped_steps", 0))

    # ------------------------------------------------------------------ training
    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], global_count: int,
                   loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput],
                   dummy_batch: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (exactly ``gradient_accumulation_steps``).

        An empty micro-batch (a short last global batch split over many ranks) runs ``dummy_batch``
        with weight 0, so every rank takes part in every collective.
        A non-finite loss on any rank is agreed on by all ranks at the accumulation boundary (one
        all-reduce): ``nan_policy="stop"`` raises :class:`NonFiniteLossError` on every rank (naming the
        step, the rank(s) and the term(s)); ``"skip"`` discards the step's gradients on every rank and
        leaves weights, optimizer state and LR schedule unchanged (counted in :attr:`skipped_steps`).
        Returns this rank's summed terms, the example count, the step's grad norm and ``skipped``.
        """
        if len(micro_batches) != self.gradient_accumulation_steps:
            raise ValueError(f"expected {self.gradient_accumulation_steps} micro-batches, got {len(micro_batches)}")
        self.ds.train()
        scale = self.dist.world_size / max(1, global_count)
        sums: dict[str, float] = {}
        count = 0
        grad_norm: Any = None
        bad_terms: dict[str, float] = {}
        bad_ranks: list[int] = []
        term_keys: list[str] = []
        acc: torch.Tensor | None = None  # [total, *terms] summed over micro-batches, on the device
        skip = False
        for micro in micro_batches:
            empty = micro["input_ids"].shape[0] == 0
            batch = self.to_device(dummy_batch if empty else micro)
            out = loss_fn(self.ds, batch)
            total = out.total.float()
            if not empty:
                term_keys = term_keys or sorted(out.terms)
                vec = torch.stack([total.detach().reshape(()),
                                   *[torch.as_tensor(out.terms[k], device=total.device).detach().float().reshape(())
                                     for k in term_keys]])
                acc = vec if acc is None else acc + vec
                count += out.count
            self.ds.backward(total * (0.0 if empty else scale), scale_wrt_gas=False)
            boundary = self.ds.is_gradient_accumulation_boundary()
            if boundary:
                # One host sync per optimizer step: the summed terms (non-finite ones included).
                values = dict(zip(["total", *term_keys], acc.tolist() if acc is not None else [], strict=True))
                bad_terms = {k: v for k, v in values.items() if not math.isfinite(v)}
                if not bad_terms:
                    sums = {k: values[k] for k in term_keys}
                    if values:
                        sums["loss"] = values["total"]
                bad_ranks = self._ranks_flagging(bool(bad_terms))
                if bad_ranks:
                    if self.options.nan_policy == "stop":
                        raise NonFiniteLossError(self._nonfinite_message(self.global_step + 1, bad_ranks, bad_terms))
                    skip = True
                elif self._own_clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        [p for p in self.module.parameters() if p.grad is not None], self._max_grad_norm)
                elif self.ds.zero_optimization_stage() == 0:
                    grad_norm = self._grad_norm()
            if boundary and skip:
                self._step_without_update()
            else:
                self.ds.step()
        self.global_step += 1
        if skip:
            if self.dist.is_main:
                print(f"[dist-peakd] skipped step {self.global_step}: non-finite loss "
                      f"({self._nonfinite_message(self.global_step, bad_ranks, bad_terms)}); nan_policy=skip", flush=True)
            sums = {k: 0.0 for k in term_keys}
            sums.update(loss=0.0, count=0.0, grad_norm=float("nan"), skipped=1.0)
            return sums
        ds_norm = None if self._own_clip else self.ds.get_global_grad_norm()
        grad_norm = ds_norm if ds_norm is not None else grad_norm
        sums["count"] = float(count)
        # may stay a device tensor (converted by the caller when it logs, avoiding a sync per step)
        sums["grad_norm"] = grad_norm if grad_norm is not None else float("nan")
        sums["skipped"] = 0.0
        return sums

    def _grad_norm(self) -> float:
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    @staticmethod
    def _nonfinite_terms(out: LossOutput) -> dict[str, float]:
        """Non-finite terms of one micro-batch's loss (the weighted total is reported as 'total')."""
        values = {**{k: v for k, v in out.terms.items()}, "total": out.total}
        return {k: float(torch.as_tensor(v).detach().float().sum()) for k, v in values.items()
                if not bool(torch.isfinite(torch.as_tensor(v).detach()).all())}

    def _ranks_flagging(self, flag: bool) -> list[int]:
        """Ranks whose ``flag`` is set (one all-reduce of a one-hot vector; every rank gets the same list)."""
        import torch.distributed as dist

        world = self.dist.world_size
        if world == 1 or not (dist.is_available() and dist.is_initialized()):
            ranks = [self.dist.rank] if flag else []
        else:
            vec = torch.zeros(world, dtype=torch.float32, device=self.device)
            vec[self.dist.rank] = 1.0 if flag else 0.0
            dist.all_reduce(vec)
            ranks = [r for r, v in enumerate(vec.tolist()) if v > 0]
        return ranks

    def _nonfinite_message(self, step: int, bad_ranks: list[int], bad_terms: dict[str, float]) -> str:
        if bad_terms:
            terms = ", ".join(f"{k}={v}" for k, v in bad_terms.items() if k != "total") or f"total={bad_terms['total']}"
            here = f"on rank {self.dist.rank}: term(s) {terms}"
        else:
            here = f"reported by rank(s) {bad_ranks}"
        return (f"non-finite loss at step {step} {here} (ranks with a non-finite loss: {bad_ranks}); "
                f"set nan_policy=skip to skip such steps, or lower the learning rate")

    def _step_without_update(self) -> None:
        """Run DeepSpeed's step bookkeeping (micro/global step counters, gradient zeroing, the skipped
        step counter) without touching weights, optimizer state or the LR schedule.

        The client optimizer's ``step`` is a no-op for this call and the optimizer DeepSpeed drives
        reports ``overflow=True`` (DeepSpeed then skips the scheduler and counts a skipped step, as it
        does for an fp16 overflow). Every rank calls this for the same step, so the collectives inside
        DeepSpeed's own step (ZeRO partitions, gradient norms) still match across ranks.
        """
        driver = self.ds.optimizer
        client = self._client_optimizer

        def no_update(*args: Any, **kwargs: Any) -> None:
            return None

        patched = [client]
        client.step = no_update  # type: ignore[method-assign]
        if driver is client or driver is None:
            def flagged(*args: Any, **kwargs: Any) -> None:
                client.overflow = True  # type: ignore[attr-defined]
            client.step = flagged  # type: ignore[method-assign]
        else:
            real_step = driver.step

            def driver_step(*args: Any, **kwargs: Any) -> Any:
                result = real_step(*args, **kwargs)
                driver.overflow = True
                return result
            driver.step = driver_step  # type: ignore[method-assign]
            patched.append(driver)
        try:
            self.ds.step()
        finally:
            for obj in patched:
                obj.__dict__.pop("step", None)
            client.__dict__.pop("overflow", None)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, batches: Iterable[dict[str, torch.Tensor]],
                forward_fn: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
                ) -> dict[str, np.ndarray]:
        """Run ``forward_fn`` over this rank's batches and gather all ranks' outputs by example id.

        ``forward_fn`` returns per-example tensors (first dim = batch); ``example_ids`` are added.
        The result is sorted by example id, each id once (no duplicates, none dropped).
        """
        self.ds.eval()
        local: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            if batch["input_ids"].shape[0] == 0:
                continue
            batch = self.to_device(batch)
            outs = forward_fn(self.ds, batch)
            outs["example_ids"] = batch["example_ids"]
            for k, v in outs.items():
                local.setdefault(k, []).append(v.detach().float().cpu().numpy()
                                               if v.is_floating_point() else v.cpu().numpy())
        merged = {k: np.concatenate(v) for k, v in local.items()}
        gathered = all_gather_objects(merged)
        keys = next((g.keys() for g in gathered if g), [])
        result = {k: np.concatenate([g[k] for g in gathered if g]) for k in keys}
        if result:
            ids, first = np.unique(result["example_ids"], return_index=True)
            if len(ids) != len(result["example_ids"]):
                raise RuntimeError("evaluation saw an example id twice across ranks")
            result = {k: v[first] for k, v in result.items()}
        return result

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, root: str | Path, tag: str, client_state: dict[str, Any]) -> Path:
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
        if self.dist.is_main:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ArtifactWriteError(e.errno, f"cannot create checkpoint folder {root}: {e.strerror}",
                                         str(root)) from e
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        state = dict(client_state, global_step=self.global_step)
        try:
            self.ds.save_checkpoint(str(root), tag=tmp_tag, client_state=state, save_latest=False)
            torch.save(rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        except Exception as e:  # ENOSPC surfaces as OSError, or RuntimeError from torch's zip writer
            self._abandon(tmp)
            raise ArtifactWriteError(getattr(e, "errno", None) or errno.EIO,
                                     f"writing checkpoint {root / tag} failed ({type(e).__name__}: {e}); "
                                     f"nothing was published and {root / LATEST_FILE} still names the "
                                     "previous checkpoint", str(tmp)) from e
        barrier()
        if self.dist.is_main:
            try:
                files = file_manifest(tmp)
                record = {"global_step": self.global_step, "tag": tag, "files": files}
                atomic_write_text(tmp / COMPLETE_FILE, json.dumps(record, indent=1))
                publish_dir(tmp, root / tag)
                atomic_write_text(root / LATEST_FILE, tag)
            except Exception as e:
                self._abandon(tmp)
                raise ArtifactWriteError(getattr(e, "errno", None) or errno.EIO,
                                         f"finishing checkpoint {root / tag} failed ({type(e).__name__}: {e}); "
                                         f"{root / LATEST_FILE} still names the previous checkpoint",
                                         str(tmp)) from e
        barrier()
        return root / tag

    def _abandon(self, tmp: Path) -> None:
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def select_checkpoint(root: str | Path, quarantine: bool = False) -> tuple[str | None, list[str]]:
        """The newest intact checkpoint under ``root`` and warnings about corrupted newer ones.

        Tries the tag in ``root/latest`` first, then every other complete tag, newest first; each is
        checked against the sizes and sha256 recorded in its COMPLETE marker. Folders without a
        COMPLETE marker (an interrupted save) and ``.tmp-*`` folders are never candidates. With ``quarantine``,
        corrupted ones are renamed ``.corrupt-<tag>`` (kept for inspection, never loaded again) and
        ``latest`` is pointed at the chosen tag. Raises :class:`CheckpointCorruptError` naming the
        bad files when checkpoints exist but none is intact; returns ``(None, [])`` when none exist.
        """
        root = Path(root)
        latest = root / LATEST_FILE
        named = latest.read_text().strip() if latest.is_file() else None
        candidates = complete_checkpoints(root)
        warnings: list[str] = []
        if named in candidates:
            candidates = [named] + [t for t in candidates if t != named]
        elif named:
            warnings.append(f"{latest} names {root / named}, which has no COMPLETE marker (an interrupted "
                            "save); using the newest complete checkpoint instead")
        bad: list[tuple[str, list[tuple[Path, str]]]] = []
        for tag in candidates:
            problems = checkpoint_problems(root / tag)
            if not problems:
                if bad and quarantine:
                    for bad_tag, _ in bad:
                        target = root / f".corrupt-{bad_tag}"
                        shutil.rmtree(target, ignore_errors=True)
                        os.replace(root / bad_tag, target)
                    atomic_write_text(latest, tag)
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

    @staticmethod
    def latest_tag(root: str | Path) -> str | None:
        """The newest intact checkpoint tag under ``root`` (see :meth:`select_checkpoint`), else None."""
        tag, warnings = Engine.select_checkpoint(root)
        for w in warnings:
            print(f"[dist-peakd] warning: {w}", file=sys.stderr, flush=True)
        return tag

    def load_state(self, root: str | Path, tag: str | None = None) -> dict[str, Any]:
        """Restore everything ``save_state`` wrote; returns the client state."""
        root = Path(root)
        tag = tag or self.latest_tag(root)
        if tag is None:
            raise FileNotFoundError(f"no complete checkpoint under {root} (missing {root / LATEST_FILE})")
        path, client_state = self.ds.load_checkpoint(str(root), tag=tag)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
        rng_file = root / tag / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        self.global_step = int(client_state.get("global_step", 0))
        return client_state

    def prune_checkpoints(self, root: str | Path, keep: Iterable[str] | int) -> None:
        """Rank 0: delete checkpoint tags under ``root`` except ``keep`` (tag names, or the number of
        newest complete checkpoints to keep), plus leftovers of interrupted saves (``.tmp-*``, ``.old-*``)."""
        root = Path(root)
        if not self.dist.is_main or not root.is_dir():
            return
        keep_set = set(complete_checkpoints(root)[:max(1, keep)]) if isinstance(keep, int) else set(keep)
        for child in root.iterdir():
            if not child.is_dir():
                continue
            leftover = child.name.startswith((".tmp-", ".old-"))
            if leftover or (not child.name.startswith(".") and child.name not in keep_set):
                shutil.rmtree(child, ignore_errors=True)

    # ------------------------------------------------------------------ export
    def export_pretrained(self, out_dir: str | Path, tokenizer: Any = None,
                          extra_json: dict[str, Any] | None = None) -> Path:
        """Export the model in HF format (fp32 weights) with its tokenizer; rank 0 writes.

        Written to ``.tmp-<name>``, with ``dist_peakd_files.json`` (size + sha256 of every file)
        last, then published over ``out_dir`` without a gap. A failed write raises
        :class:`ArtifactWriteError` naming the path and leaves the previous export in place.
        """
        out_dir = Path(out_dir)
        module = self.module
        gathered = None
        if self.ds.zero_optimization_stage() == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
            gathered.__enter__()
        try:
            if self.dist.is_main:
                tmp = out_dir.with_name(f".tmp-{out_dir.name}")
                try:
                    shutil.rmtree(tmp, ignore_errors=True)
                    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
                    module.save_pretrained(str(tmp), state_dict=state)
                    if tokenizer is not None:
                        tokenizer.save_pretrained(str(tmp))
                    if extra_json:
                        for name, obj in extra_json.items():
                            (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
                    files = file_manifest(tmp, exclude=[EXPORT_MANIFEST])
                    atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps({"files": files}, indent=1))
                    publish_dir(tmp, out_dir)
                except Exception as e:  # OSError, or the serializer's own error type on ENOSPC
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ArtifactWriteError(getattr(e, "errno", None) or errno.EIO,
                                             f"exporting {out_dir} failed ({type(e).__name__}: {e}); the "
                                             "previous export (if any) is untouched", str(tmp)) from e
        finally:
            if gathered is not None:
                gathered.__exit__(None, None, None)
        barrier()
        return out_dir


def sync_flag(value: bool) -> bool:
    """True on every rank when rank 0 says so (e.g. 'a checkpoint exists')."""
    return bool(broadcast_object(value))
