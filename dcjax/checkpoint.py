"""Orbax checkpoints of a DeepCluster run: train state, assignment, epoch indices, metadata.

One checkpoint per save holds three items:
  * `state`: the TrainState (params, batch_stats, both optimizer states, step);
  * `arrays`: numpy int32 arrays: the current pseudo-label `assignment` [N] and the epoch's
    sampled training `indices` [n], so an epoch resumed in its middle trains on the same images;
  * `meta`: JSON: epoch, batch position within the epoch, whether the epoch's training is done,
    the metric history, the partial metrics of the current epoch, the config.
Every random choice of a run is a function of (config.seed, epoch, step), so this is the whole RNG
state. Saving is atomic (Orbax writes a temporary folder and renames it); a latest checkpoint that
cannot be read is reported and the one before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "arrays", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, arrays: dict[str, np.ndarray], meta: dict) -> None:
        if step in self._manager.all_steps():
            # The same position again (an interrupt right after a save, or a rerun past an
            # unreadable checkpoint): replace it.
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            arrays=ocp.args.StandardSave({k: np.asarray(v) for k, v in arrays.items()}),
            meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any,
                       step: int | None = None) -> tuple[int, Any, dict, dict] | None:
        """(step, state, arrays, meta) of the newest readable checkpoint (of `step` only, when
        given), or None if there is none."""
        wanted = step
        for step in reversed(self.steps()):
            if wanted is not None and step != wanted:
                continue
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    arrays=ocp.args.StandardRestore(),
                    meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to older
                logging.warning("checkpoint %d in %s cannot be read (%s: %s); trying the previous one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0])
                print(f"warning: checkpoint {step} is unreadable ({type(e).__name__}); "
                      f"using an earlier one")
                continue
            arrays = {k: np.asarray(v) for k, v in restored["arrays"].items()}
            return step, restored["state"], arrays, dict(restored["meta"])
        return None

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of `tree`, to restore into the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.Array) else x, tree)
