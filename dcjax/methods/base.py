"""The hooks a training method gives the runner (dcjax/runner.py).

The runner holds two states across an epoch and a checkpoint:
  * the *train state*: a pytree of device arrays replicated on the mesh (parameters, BatchNorm
    statistics, optimiser states, the step counter), restored by Orbax into the layout of
    `init_state()`;
  * the *method state*: an object of the method's own type (for DeepCluster the pseudo-labels and
    the epoch's sampled images), saved as a dict of numpy arrays by `state_to_checkpoint` and
    rebuilt by `state_from_checkpoint`.
Every random choice a method makes must be a function of (config.seed, epoch, step) or of what the
two states hold: that is what makes a run resumed after SIGKILL end where the uninterrupted run does.

One epoch, as the runner drives it:

    state, mstate, fields = method.begin_epoch(state, mstate, epoch)   # only on a fresh epoch
    batches, steps = method.batches(mstate, epoch, start_batch)
    for batch in batches: state, metrics = method.train_step(state, batch, mstate)
    record = {epoch, mean of each metric, **method.record_fields(partial), train time}
    checkpoint(state, method.state_to_checkpoint(mstate, epoch_done=True))
    mstate = method.end_epoch(state, mstate, epoch, history)

`begin_epoch`'s fields (a dict of JSON values, e.g. a typed record's `asdict`) are kept in the
epoch's partial record, which mid-epoch checkpoints save, so a resumed epoch reports them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def field(record: dict, key: str, spec: str = ".4f") -> str:
    """A record's value formatted for the epoch line, '-' when it is None or absent."""
    value = record.get(key)
    return "-" if value is None else format(value, spec)


class Method:
    """Base class of a method: the defaults here suit a method without epoch-level state."""

    name = ""
    # The per-batch metrics `train_step` returns, in the order the epoch record lists their means.
    metrics: tuple[str, ...] = ("loss",)
    # The keys `begin_epoch` adds to the epoch record (absent ones are recorded as None).
    record_keys: tuple[str, ...] = ()

    def __init__(self, run: Any):
        """Builds the model and the jitted functions; `run` is the runner's `Run` (config, mesh,
        data, stop signal, caches)."""
        self.run = run

    # --------------------------------------------------------------------- state
    def init_state(self) -> Any:
        """The train state a run starts from (replicated on the mesh)."""
        raise NotImplementedError

    def random_state(self) -> Any:
        """The train state drawn from config.seed, before any loaded weights (the comparison's
        'random init'); by default the initial state."""
        return self.init_state()

    def new_method_state(self) -> Any:
        """The method state before the first epoch."""
        return None

    def state_to_checkpoint(self, mstate: Any, epoch_done: bool) -> dict[str, np.ndarray]:
        """The method state as named numpy arrays (non-empty: Orbax stores no empty array).
        `epoch_done`: the checkpoint ends an epoch; state that only lives within an epoch can be
        left out."""
        return {"none": np.zeros(1, np.int32)}

    def state_from_checkpoint(self, arrays: dict[str, np.ndarray], epoch_done: bool) -> Any:
        """The method state `state_to_checkpoint` saved."""
        return None

    # --------------------------------------------------------------------- an epoch
    def begin_epoch(self, state: Any, mstate: Any, epoch: int) -> tuple[Any, Any, dict]:
        """Before a fresh epoch's first batch: (state, method state, record fields)."""
        return state, mstate, {}

    def batches(self, mstate: Any, epoch: int, start_batch: int) -> tuple[Iterable[dict], int]:
        """(the epoch's batches from `start_batch` on, the number of batches in the epoch)."""
        raise NotImplementedError

    def train_step(self, state: Any, batch: dict, mstate: Any) -> tuple[Any, dict]:
        """One optimisation step: (new state, {metric: device scalar}) for `metrics`."""
        raise NotImplementedError

    def end_epoch(self, state: Any, mstate: Any, epoch: int, history: list[dict]) -> Any:
        """After the epoch's checkpoint and record (plots, etc.; process 0 only writes files):
        the method state for the next epoch."""
        return mstate

    def record_fields(self, partial: dict) -> dict:
        """The epoch record's method fields, from the epoch's partial record."""
        return {key: partial.get(key) for key in self.record_keys}

    def format_record(self, record: dict) -> str:
        """The line printed after each epoch."""
        return f"epoch {record['epoch']}: " + " ".join(
            f"{key} {record[key]:.4f}" for key in self.metrics if record.get(key) is not None)

    @classmethod
    def initial_network(cls, config: Any, mesh: Any):
        """(model, params, batch_stats) of the method's network drawn from config.seed, the
        values `random_state` holds, replicated on `mesh`, without data: what evaluate, export,
        predict and convert restore a checkpoint's network into."""
        raise NotImplementedError(f"the method {cls.name!r} has no network to load")

    # --------------------------------------------------------------------- evaluation, the end
    def network(self, state: Any):
        """The evaluators' view of the network (dcjax.runs.Network), or None when the
        method has no network they can read."""
        return None

    def feature_fn(self):
        """The jitted (params, batch_stats, images) -> features the evaluators read, or None."""
        return None

    def finish(self, state: Any, mstate: Any, history: list[dict]) -> dict:
        """The end-of-run work (export, comparisons): fields for summary.json."""
        return {}

    def finished(self, step: int) -> bool:
        """Whether the end-of-run work of checkpoint `step` is already written (a rerun of a
        finished run then has nothing to do)."""
        return True
