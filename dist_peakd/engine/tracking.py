"""TensorBoard tracking on rank 0 only (other ranks get a no-op tracker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Tracker:
    """Writes scalars, text and hparams to ``log_dir`` when ``enabled`` (rank 0); silent otherwise."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(key, float(value), step)

    def text(self, tag: str, body: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, body, step)

    def config(self, config: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Record the run's full config as text (pretty JSON) and as TensorBoard hparams."""
        if self._writer is None:
            return
        self._writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        flat = {k: v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str)
                for k, v in config.items() if v is not None}
        self._writer.add_hparams(flat, metrics or {}, run_name=".")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
