"""The engine's and the trainer's option sections: each option declared once, here (``dist_peakd.schema``).

:class:`EngineOptions` (what :class:`~dist_peakd.engine.engine.Engine` reads) is the device section
(DeepSpeed config, precision, ZeRO, compile) plus the optimizer section (batch sizes, AdamW, clipping,
non-finite policy); :class:`LoopOptions` (what the :class:`~dist_peakd.engine.trainer.Trainer` reads) is
the loop section plus a progress label. The commands' options classes (``dist_peakd.config``) are made
of these same sections, so ``opts.engine_options()`` / ``opts.loop_options()`` are views, not copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import option
from .ds_config import PRECISIONS, ZERO_STAGES
from .nonfinite import NAN_POLICIES

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrustOption:
    """Whether a dist-peakd folder without a file manifest is accepted (every command that reads one)."""

    trust_unverified: bool = option(False, help="accept a dist-peakd folder (export, checkpoint) that has no file "
                                                "manifest; a file that fails its manifest is refused regardless",
                                    result=False)


@dataclass
class SeedOption:
    seed: int = option(0, help="random seed (sampling, init, dropout)", ge=0)


@dataclass
class DeviceOptions:
    """How the model runs: the DeepSpeed config, its precision and ZeRO stage, torch.compile."""

    ds_config: str = option("fp32_zero0", help="DeepSpeed config: a ds_configs/ file stem or a path", group="engine")
    precision: str | None = option(None, help="fp32 | bf16 | fp16 (overrides the ds_config)", group="engine",
                                   choices=PRECISIONS)
    zero_stage: int | None = option(None, help="ZeRO stage 0-3 (overrides the ds_config)", group="engine",
                                    choices=ZERO_STAGES)
    compile: bool = option(False, help="torch.compile the model forward (DeepSpeed engine.compile) and the loss; "
                                       "batches then pad to multiples of 8 (see pad_to_multiple_of)", group="engine")
    compile_mode: str = option("default", help="torch.compile mode: default | reduce-overhead (CUDA graphs) | "
                                               "max-autotune | max-autotune-no-cudagraphs", group="engine",
                               choices=COMPILE_MODES)


@dataclass
class OptimizerOptions:
    """How the model trains: batch sizes, AdamW and its schedule, clipping, the non-finite policy."""

    batch_size: int = option(32, help="global batch size (all ranks, all accumulation steps)", group="engine", ge=1)
    micro_batch_size: int | None = option(None, help="per-rank micro-batch (default batch_size / ranks)",
                                          group="engine", ge=1)
    gradient_clipping: float | None = option(1.0, help="max gradient norm (None: no clipping)", ge=0, group="engine")
    lr: float = option(2e-5, help="peak learning rate (AdamW, linear warmup then decay)", group="engine", gt=0)
    weight_decay: float = option(0.01, help="AdamW weight decay", ge=0, group="engine")
    warmup_ratio: float = option(0.1, help="fraction of the steps spent warming up", group="engine", ge=0, lt=1)
    nan_policy: str = option("stop", help="non-finite loss: stop (exit 3, naming step and term) | skip the step",
                             group="engine", choices=NAN_POLICIES)
    fused_optimizer: bool = option(True, help="fused AdamW kernel on CPU too (False: torch's per-tensor loop on "
                                              "CPU, bit for bit the results before issue 16; GPUs always fuse)",
                                   group="engine")


@dataclass
class EngineOptions(TrustOption, OptimizerOptions, DeviceOptions):
    """Everything the engine reads (``trust_unverified``: resume from a checkpoint without a manifest)."""


@dataclass
class EvalBatchOption:
    eval_batch_size: int = option(128, help="global evaluation batch size", result=False, group="loop", ge=1)


@dataclass
class LoopSection(TrustOption, EvalBatchOption, SeedOption):
    """The training loop: epochs, evaluation and logging cadence, checkpoints, skipped steps."""

    epochs: float = option(3.0, help="training epochs (fractions allowed)", group="loop", gt=0)
    eval_every_steps: int = option(0, help="also evaluate every N steps (0: end of each epoch only)", ge=0,
                                   group="loop")
    log_every_steps: int = option(10, help="log train scalars every N steps", result=False, group="loop", ge=1)
    stop_after_steps: int | None = option(None, help="checkpoint and stop (exit 75) after N steps of this "
                                                     "invocation; rerunning the same command resumes and runs N "
                                                     "more (the run's last step finishes it)", result=False,
                                          group="loop", ge=1)
    save_every_steps: int = option(0, help="also checkpoint every N steps (0: at epoch ends and on SIGTERM only)",
                                   result=False, group="loop", ge=0)
    keep_checkpoints: int = option(2, help="newest complete checkpoints kept; a corrupted newest falls back",
                                   result=False, group="loop", ge=1)
    keep_checkpoints_after_success: bool = option(False, help="keep checkpoints/ after the stage completed "
                                                              "(default: removed once summary.json is written)",
                                                  result=False, group="loop")
    max_skipped_fraction: float = option(0.1, help="nan_policy=skip: a run that skipped more than this fraction "
                                                   "of its steps is not finished (exit 3, no final/ export)",
                                         result=False, ge=0, le=1, group="loop")


@dataclass
class LoopOptions(LoopSection):
    """What the trainer reads: the loop section and a label (progress bars, eval lines; default the output
    folder's name), which a stage sets (not an option)."""

    label: str = ""
