"""Orbax checkpoints of a DeepCluster run: train state, assignment, epoch indices, metadata.

One checkpoint per save holds three items:
  * `state`: the TrainState (params, batch_stats, both optimizer states, step);
  * `arrays`: numpy int32 arrays: the current pseudo-label `assignment` [N] and the epoch's
    sampled training `indices` [n], so an epoch resumed in its middle trains on the same images;
  * `meta`: JSON: epoch, batch position within the epoch, whether the epoch's training is done,
    the metric history, the partial metrics of the current epoch, the config.
Every random choice of a run is a function of (config.seed, epoch, step), so this is the whole RNG
state. Saving is atomic (Orbax writes a temporary folder and renames it).

Nothing is ever deleted because it did not load (docs/reliability.md):
  * a checkpoint whose arrays have other shapes than the requested state is a config mismatch:
    `CheckpointMismatch` is raised before anything is written;
  * a checkpoint that cannot be read (truncated, damaged) is reported and moved aside to
    `checkpoints/unreadable/<step>`, and the newest readable one is used; if none can be read, all
    are left in place and `CheckpointError` says so;
  * a step that already exists is never replaced.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class _NoItemMetadataWarning(logging.Filter):
    """Drops Orbax's 'Metadata file does not exist: .../<step>/<item>/_CHECKPOINT_METADATA'
    warning: Orbax writes that file per checkpoint (<step>/_CHECKPOINT_METADATA), not per item,
    and looks for it in each item's folder on every restore, so every resume printed a line that
    read like a damaged checkpoint. Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Metadata file does not exist")
                    and message.rstrip().endswith("_CHECKPOINT_METADATA"))


class _DiskFullThreadErrors(logging.Filter):
    """Drops the error (with its traceback) that each of Orbax's writer threads logs when the disk
    is full, and asyncio's 'Task exception was never retrieved' for the same failure of an Orbax
    write task (logged when the task is collected, which depends on timing): the same failure
    reaches the save call, and the runner reports it in one line (runner.no_space_error, exit 4)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        return not (("orbax" in record.pathname or "orbax" in text)
                    and "No space left on device" in text)


logging.getLogger("absl").addFilter(_NoItemMetadataWarning())
logging.getLogger("absl").addFilter(_DiskFullThreadErrors())
logging.getLogger("asyncio").addFilter(_DiskFullThreadErrors())

_unraisable = sys.unraisablehook


def _drop_closed_loop(unraisable) -> None:
    """After a failed write, TensorStore's completion callbacks still post to Orbax's event loop,
    which is closed by then; each prints 'RuntimeError: Event loop is closed' (58 tracebacks on a
    full disk). Only that error is dropped; every other unraisable exception goes to the default
    hook."""
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return
    _unraisable(unraisable)


sys.unraisablehook = _drop_closed_loop


class CheckpointError(ValueError):
    """No checkpoint of a workdir can be read; they are all left as they are."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint holds arrays of other shapes than the requested config gives."""


def _path_str(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def shapes(tree: Any) -> dict[str, tuple]:
    """{'params/conv1/kernel': shape, ...} of the arrays of `tree` (any pytree of shaped leaves)."""
    return {_path_str(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def shape_differences(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    out = []
    for name in sorted(set(saved) | set(wanted)):
        a, b = saved.get(name), wanted.get(name)
        if a != b:
            out.append(f"{name}: checkpoint {a if a is not None else 'absent'}, "
                       f"config {b if b is not None else 'absent'}")
    return out


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "arrays", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, arrays: dict[str, np.ndarray], meta: dict) -> bool:
        """Writes checkpoint `step`; returns False (and writes nothing) if it exists already."""
        if step in self._manager.all_steps():
            print(f"warning: checkpoint {step} exists already; it is kept as it is")
            return False
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            arrays=ocp.args.StandardSave({k: np.asarray(v) for k, v in arrays.items()}),
            meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        return True

    def saved_shapes(self, step: int) -> dict[str, tuple] | None:
        """The array shapes of checkpoint `step`'s state, or None if its metadata is unreadable."""
        try:
            metadata = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
            return shapes(getattr(metadata, "item_metadata", metadata))
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore will say more
            return None

    def restore_latest(self, abstract_state: Any,
                       step: int | None = None) -> tuple[int, Any, dict, dict] | None:
        """(step, state, arrays, meta) of the newest readable checkpoint (of `step` only, when
        given), or None if there is none. Unreadable newer ones are moved aside; see module doc."""
        wanted = step
        unreadable: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            if wanted is not None and step != wanted:
                continue
            wanted_shapes = shapes(abstract_state)
            saved = self.saved_shapes(step)
            if saved is not None and set(saved) == set(wanted_shapes):
                self._check_shapes(step, saved, wanted_shapes)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    arrays=ocp.args.StandardRestore(),
                    meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - see below: a mismatch, or unreadable
                as_saved = self._restore_as_saved(step)
                if as_saved is not None:  # readable, but not as this config's state
                    self._check_shapes(step, shapes(as_saved), wanted_shapes)
                    raise CheckpointMismatch(
                        f"checkpoint {step} in {self.directory} does not fit this config's state "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); it was "
                        f"written with another config: use a new --workdir") from None
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]
                logging.warning("checkpoint %d in %s cannot be read (%s)", step, self.directory,
                                reason)
                print(f"warning: checkpoint {step} is unreadable ({type(e).__name__}); "
                      f"trying an earlier one")
                unreadable.append((step, reason))
                continue
            arrays = {k: np.asarray(v) for k, v in restored["arrays"].items()}
            if unreadable:
                self._set_aside([s for s, _ in unreadable])
            return step, restored["state"], arrays, dict(restored["meta"])
        if unreadable:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read (steps "
                f"{', '.join(str(s) for s, _ in unreadable)}; newest: {unreadable[0][1]}); they are "
                f"left as they are: use a new --workdir, or move them away to start over")
        return None

    def restore_variables(self, abstract: dict, step: int | None = None
                          ) -> tuple[int, dict, dict] | None:
        """(step, {'params', 'batch_stats'}, meta) of the newest checkpoint (or `step`), reading
        only the network's arrays out of the train state: what evaluate, export, predict and
        convert need of any method's checkpoint (a DeepCluster-v2 state also holds a memory bank
        and optimiser states, which are not read). None when there is no checkpoint;
        CheckpointMismatch when the network's shapes differ from `abstract`'s."""
        steps = self.steps()
        if not steps:
            return None
        step = steps[-1] if step is None else step
        saved = self.saved_shapes(step)
        if saved is not None:
            mine = {k: v for k, v in saved.items() if k.split("/")[0] in abstract}
            self._check_shapes(step, mine, shapes(abstract))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - unreadable: one line, nothing moved
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
                                  [:400]) from None
        return step, dict(restored["state"]), dict(restored["meta"])

    def _check_shapes(self, step: int, saved: dict, wanted: dict) -> None:
        differences = shape_differences(saved, wanted)
        if differences:
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} holds arrays of other shapes than this "
                f"config gives ({len(differences)} differ, e.g. {differences[0]}); it was written "
                f"with another config: use a new --workdir")

    def _restore_as_saved(self, step: int) -> Any:
        """Checkpoint `step`'s state as it was saved (its own shapes), or None when any of its
        items cannot be read."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), arrays=ocp.args.StandardRestore(),
                meta=ocp.args.JsonRestore()))["state"]
        except Exception:  # noqa: BLE001 - unreadable
            return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints to checkpoints/unreadable/ (never deletes them), so new
        checkpoints of the same steps can be written."""
        aside = self.directory / "unreadable"
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(str(self.directory / str(step)), str(target))
            print(f"warning: unreadable checkpoint {step} moved to {target}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of `tree`, to restore into the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.Array) else x, tree)
