"""Stopping a run cleanly: SIGINT / SIGTERM in every phase, and a diverged loss.

`StopSignal` records the signal; the loop polls it between batches (extraction, training) and
between k-means iterations, so a run stops within one batch or iteration of the signal, whatever
phase it is in. In training the loop saves a checkpoint first; in extraction, PCA and k-means the
last checkpoint (the end of the previous epoch) is already the last consistent state, and the
interrupted phase is redone on resume.

Across processes a signal (SLURM's or a TPU VM's preemption notice) reaches each process at its own
moment, and what follows is collective (the checkpoint, or leaving a collective loop), so they agree
first: every `every` polls and at a phase's last one each process shares its flag, and all stop if
any got one, at the same place.

JAX's own `multihost_utils.reached_preemption_sync_point(step)` was checked and does not fit: it
needs `jax_enable_preemption_service`, a call at every training step from the same starting step,
knows only the scheduler's SIGTERM (not a user's SIGINT) and returns False without a distributed
client, so extraction, PCA, k-means and one-process runs would still need this agreement; the
allgather here costs one tiny collective every `log_every_steps` batches.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

EXIT_DIVERGED = 3
EXIT_NO_SPACE = 4


class Interrupted(Exception):
    """A SIGINT / SIGTERM stopped the run; `kept` says which checkpoint a rerun resumes from."""

    def __init__(self, signum: int, phase: str, kept: str = ""):
        self.signum, self.phase, self.kept = signum, phase, kept
        super().__init__(self._message())

    def _message(self) -> str:
        return (f"stopped by signal {self.signum} during {self.phase}; "
                f"{self.kept or 'no checkpoint yet'}; rerun the same command to resume")

    def with_kept(self, kept: str) -> Interrupted:
        self.kept = kept
        self.args = (self._message(),)
        return self


class Diverged(FloatingPointError):
    """A non-finite loss; the last checkpoint (written before it) is kept."""


class NoSpace(OSError):
    """The workdir's disk is full; the last checkpoint (written before it) is kept."""


class StopSignal:
    """SIGINT / SIGTERM handlers for the duration of a `with` block; `signum` is 0 until one
    arrives."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, done: int, total: int, every: int = 1) -> bool:
        """Whether to stop after poll `done` of `total` (all processes agree; see module doc)."""
        if jax.process_count() == 1:
            return bool(self.signum)
        if done % every and done != total:
            return False
        from jax.experimental import multihost_utils

        signum = int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))
        if signum:
            self.signum = signum
        return bool(signum)

    def check_local(self, phase: str) -> None:
        """Raises Interrupted on a signal to this process (for work that process 0 does alone)."""
        if self.signum:
            raise Interrupted(self.signum, phase)

    def check(self, phase: str, done: int, total: int, every: int = 1) -> None:
        """Raises Interrupted when `agreed(done, total, every)`."""
        if self.agreed(done, total, every):
            raise Interrupted(self.signum, phase)
