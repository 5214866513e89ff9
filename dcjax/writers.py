"""Run outputs of process 0: `metrics.jsonl` (one JSON object per epoch) and TensorBoard events."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table of `rows` under `header`; a '|' inside a cell is escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


class MetricWriter:
    """Writes only when `enabled` (process 0); the epoch history is the source of truth, so a resumed
    run rewrites `metrics.jsonl` from its checkpoint and never duplicates or loses a line."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def reset(self, history: list[dict[str, Any]]) -> None:
        if self.enabled:
            with open(self.path, "w") as f:
                for record in history:
                    f.write(json.dumps(record) + "\n")

    def write_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                if math.isfinite(value):
                    self._tb.add_scalar(f"epoch/{key}", value, record["epoch"])
        self._tb.flush()

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.enabled:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
