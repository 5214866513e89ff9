"""The run harness: `train_and_evaluate(config, workdir)` for any method (dcjax/methods/).

The runner owns what every method needs and none should write again (docs/design.md, "Runner and
methods"): the config and data checks, the workdir and its lock, the resume guard (a workdir holds
one config), signals (a checkpoint, then exit 128 + signal), checkpoints of the train state plus the
method's own state, the metric writer, the evaluators during training, divergence checks, a full
disk, and summary.json. The method (`config.method`, dcjax.methods) owns what an epoch does: its
hooks are described in dcjax/methods/base.py.

Parallelism: the state is replicated on a 1-D device mesh ('data') and each batch sharded on it; a
method's jitted step sees the global batch.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from dcjax import faults, methods, sharding
from dcjax.checkpoint import Checkpointer, abstract_like
from dcjax.config_lib import (
    ConfigError,
    apply_eval_protocol,
    resolve_auto,
    resume_changes,
    validate_against_data,
)
from dcjax.data import pipeline
from dcjax.data.datasets import DataError, DatasetInfo, open_split, record_run
from dcjax.data.importer import ensure_embedded
from dcjax.evaluate import evaluators
from dcjax.evaluate.common import Splits
from dcjax.evaluate.representations import NetworkEmbedding
from dcjax.features import progress
from dcjax.runs import init_weights, saved_config
from dcjax.sharding import default_mesh
from dcjax.stopping import Diverged, Interrupted, NoSpace, StopSignal
from dcjax.validation import validate
from dcjax.view_cache import ViewCache, files_fingerprint
from dcjax.workdir import WorkdirError, WorkdirLock, check_workdir, create_workdir
from dcjax.writers import MetricWriter

# ======================================================================== the run


@dataclasses.dataclass
class Run:
    """What the loop and the method need, built once."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Mesh
    source: Any
    info: DatasetInfo
    eval_source: Any = None  # the held-out split, when evaluators run during training
    evaluators: dict = dataclasses.field(default_factory=dict)  # name -> periodic Evaluator
    view_cache: ViewCache | None = None  # the train split's deterministic view, decoded once
    eval_view_cache: ViewCache | None = None  # the same for the held-out split (evaluations)
    stop: StopSignal = dataclasses.field(default_factory=StopSignal)
    k_from_images: bool = False  # clustering.k was 0: derived from the number of images
    method: Any = None  # the dcjax.methods.base.Method of config.method

    @property
    def lead(self) -> bool:
        """Whether this is process 0 (the one that writes files and prints)."""
        return jax.process_index() == 0

    @property
    def rows(self) -> NamedSharding:
        return sharding.rows(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        return sharding.replicated(self.mesh)

    @property
    def num_images(self) -> int:
        return len(self.source)

    @functools.cached_property
    def train_key(self) -> jax.Array:
        """key(seed), replicated on the mesh (a train step folds in the step number)."""
        return jax.jit(lambda: jax.random.key(self.config.seed), out_shardings=self.replicated)()

    def global_array(self, local: np.ndarray) -> jax.Array:
        """This process's rows of a batch as the global array sharded over the mesh."""
        return jax.make_array_from_process_local_data(self.rows, local)

    def loader_options(self) -> dict:
        return pipeline.loader_options(self.config)

    def init_weights(self, params: Any, batch_stats: Any) -> tuple[dict, dict]:
        """config.model.init's network (a converted folder or a run) in place of drawn weights."""
        return init_weights(self.config.model.init, params, batch_stats)

    def print(self, *args) -> None:
        """print on process 0 only."""
        if self.lead:
            print(*args)

    def print_cache_log(self) -> None:
        """Prints (process 0) what the view caches decided since the last call."""
        for label, cache in (("view cache:", self.view_cache),
                             ("view cache (held-out split):", self.eval_view_cache)):
            for line in cache.take_log() if cache is not None else ():
                self.print(line.replace("view cache:", label, 1))


@dataclasses.dataclass
class LoopState:
    """The loop's bookkeeping besides the train state, saved with every checkpoint.

    `epoch` is the epoch in progress and `step_in_epoch` the batches of it done; `started` whether
    the method's `begin_epoch` ran for it; `method_state` the method's own state; `partial` the
    epoch's record so far (the method's fields, running metric sums, time); `history` the records
    of the finished epochs. Checkpoints hold the method state as an `arrays` item and the rest as
    a JSON `meta` item.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    started: bool = False
    method_state: Any = None
    partial: dict = dataclasses.field(default_factory=dict)
    history: list[dict] = dataclasses.field(default_factory=list)

    def to_checkpoint(self, method, epoch_done: bool, num_images: int,
                      config: ml_collections.ConfigDict) -> tuple[dict, dict]:
        """(arrays, meta) for Checkpointer.save; an epoch_done checkpoint keeps no epoch state."""
        meta = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "epoch_done": epoch_done,
                "partial": {} if epoch_done else {k: v if not isinstance(v, jax.Array) else float(v)
                                                  for k, v in self.partial.items()},
                "num_images": num_images, "history": self.history, "method": method.name,
                "config": json.loads(config.to_json_best_effort())}
        return method.state_to_checkpoint(self.method_state, epoch_done), meta

    @classmethod
    def from_checkpoint(cls, method, arrays: dict, meta: dict) -> LoopState:
        """The state to go on from: the next epoch after an epoch_done checkpoint, else the same
        epoch at the saved batch."""
        mstate = method.state_from_checkpoint(arrays, bool(meta["epoch_done"]))
        if meta["epoch_done"]:
            return cls(epoch=meta["epoch"] + 1, method_state=mstate, history=meta["history"])
        partial = dict(meta["partial"])
        if "acc_sum" in partial:  # checkpoints written before the runner named sums by metric
            partial["accuracy_sum"] = partial.pop("acc_sum")
        return cls(epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"], started=True,
                   method_state=mstate, partial=partial, history=meta["history"])


# ======================================================================== set-up


def setup(config: ml_collections.ConfigDict, workdir: str, given: Iterable[str] = ()) -> Run:
    """Applies config.eval.protocol (the fields in `given`, 'eval.x' as set on a command line,
    are kept), validates the config against the devices and the data and builds the run and its
    method; writes nothing."""
    apply_eval_protocol(config, given)
    method_class = methods.get(config.get("method", "deepcluster"))
    validate(config, num_devices=jax.device_count())
    ensure_embedded(config.data.name, config.data.data_dir or None)
    source, info = open_split(config.data.name, config.data.train_split,
                              config.data.data_dir or None)
    k_from_images = config.clustering.k == 0
    for note in resolve_auto(config, info.split_sizes):
        if jax.process_index() == 0:
            print(note)
    validate_against_data(config, info.split_sizes)
    mesh = default_mesh()
    eval_source = None
    periodic = {name: e for name, e in evaluators.from_config(config).items() if e.period()}
    if periodic:
        if not config.data.eval_split or info.num_classes < 2:
            raise ConfigError(f"evaluating during training ({', '.join(periodic)} every "
                              f"{[e.period() for e in periodic.values()]} epochs) needs a labelled "
                              f"config.data.eval_split of {config.data.name!r}")
        eval_source, _ = open_split(config.data.name, config.data.eval_split,
                                    config.data.data_dir or None)
    d = config.data
    folder = Path(d.view_cache_dir or Path(workdir) / "view_cache")

    def split_cache(split: str, directory: Path) -> ViewCache:
        return ViewCache(d.view_cache, directory=directory, share=d.view_cache_share,
                         dataset={"name": d.name, "split": split,
                                  "files": files_fingerprint(info.split_files.get(split, ()))})

    view_cache = split_cache(d.train_split, folder)
    eval_view_cache = (split_cache(d.eval_split, folder / "eval")
                       if d.eval_split and d.eval_split in info.split_sizes else None)
    run = Run(config=config, workdir=Path(workdir), mesh=mesh, source=source, info=info,
              eval_source=eval_source, evaluators=periodic, view_cache=view_cache,
              eval_view_cache=eval_view_cache, k_from_images=k_from_images)
    run.method = method_class(run)
    return run


def check_resume(run: Run) -> list[tuple]:
    """Stops (ConfigError) when the workdir's checkpoints were written with other values of fields
    that give saved state its meaning (config_lib.FROZEN); returns the changes that are allowed."""
    saved = saved_config(run.workdir)
    if saved is None:
        return []
    frozen, allowed = resume_changes(saved, run.config)
    if frozen:
        def say(field, old, new):
            if field == "clustering.k" and run.k_from_images:
                return (f"clustering.k: one cluster per 100 images (config.clustering.k=0), {old!r} "
                        f"in the run, {new!r} now for {run.num_images:,} images")
            return f"{field}: {old!r} in the run, {new!r} now"

        listed = "; ".join(say(*change) for change in frozen)
        grown = any(field == "clustering.k" for field, _, _ in frozen) and run.k_from_images
        raise ConfigError(f"--workdir={run.workdir} holds a run with another config ({listed}); "
                          f"these cannot change on a resumed run: use a new --workdir"
                          + (f" (new images get this run's clusters without training: python -m "
                             f"dcjax.predict --workdir={run.workdir} --source=FOLDER "
                             f"--out=FILE.csv; to train on the grown folder, start the new "
                             f"--workdir from this run's network: --config=configs/folder.py:"
                             f"{run.config.data.name},init={run.workdir})" if grown else ""))
    return allowed


def take_lock(run: Run) -> WorkdirLock | None:
    """Process 0 creates the workdir and locks it; every process learns whether that worked."""
    lock, problem = None, ""
    if jax.process_index() == 0:
        try:
            create_workdir(run.workdir)
            lock = WorkdirLock(run.workdir).acquire()
        except WorkdirError as e:
            problem = str(e)
    if jax.process_count() > 1:
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(bool(problem))))
        if failed and not problem:
            problem = f"process 0 could not take --workdir={run.workdir} (see its error)"
    if problem:
        raise WorkdirError(problem)
    return lock


def describe_checkpoint(meta: dict | None, step: int | None) -> str:
    if meta is None:
        return "no checkpoint was written yet"
    where = (f"end of epoch {meta['epoch']}" if meta["epoch_done"] else
             f"epoch {meta['epoch']}, batch {meta['step_in_epoch']}")
    return f"the last checkpoint ({where}, step {step}) is kept"


# ======================================================================== a full disk


def _no_space(error: BaseException) -> str | None:
    """The path (or '') of a 'no space left on device' anywhere in `error`'s chain, else None.
    Orbax and TensorStore report it as ValueError / XlaRuntimeError text, Python as OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.filename or ""
        if "No space left on device" in str(error) or "RESOURCE_EXHAUSTED: Disk" in str(error):
            return ""
        error = error.__cause__ or error.__context__
    return None


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def no_space_error(run: Run, path: str, state: Any, kept: str) -> NoSpace:
    """The one-line NoSpace for a write that found the disk of the workdir full."""
    where = Path(path) if path else run.workdir
    probe = where if where.exists() else run.workdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = checkpoint_bytes(run.workdir / "checkpoints", state)
    return NoSpace(f"no space left on the device of {where} ({_mib(free)} free; each checkpoint of "
                   f"this run takes about {_mib(need)}): {kept}; free space (or copy the workdir "
                   f"to a larger disk and give that --workdir) and rerun the same command to "
                   f"resume")


def checkpoint_bytes(directory: Path, state: Any) -> int:
    """The size on disk of the newest finished checkpoint in `directory`, or without one the
    train state's bytes."""
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()),
                   reverse=True) if directory.is_dir() else []
    for step in steps:
        return sum(f.stat().st_size for f in (directory / str(step)).rglob("*") if f.is_file())
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state)
               if hasattr(x, "shape"))


# ======================================================================== the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       given: Iterable[str] = ()) -> dict:
    """Runs `config.method` as `config` says, writing to `workdir`; resumes from its checkpoints.
    `given`: the config fields set on the command line ('eval.linear_lr', ...), which
    config.eval.protocol='reference' leaves as they are (from Python, every field is the
    protocol's).

    Before anything is written the config, the data and the workdir are checked, and a workdir
    with checkpoints must hold a run of the same config (docs/reliability.md). Returns the final
    epoch's record plus the method's end-of-run fields (summary.json).
    """
    path = check_workdir(workdir)
    run = setup(config, str(path), given)
    changes = check_resume(run)
    lock = take_lock(run)
    try:
        with run.stop:
            return _train(run, changes)
    finally:
        if lock is not None:
            lock.release()


def _train(run: Run, changes: list[tuple]) -> dict:
    c, method = run.config, run.method
    state = method.init_state()
    ckpt = Checkpointer(run.workdir / "checkpoints", keep=c.keep_checkpoints)
    loop = LoopState(method_state=method.new_method_state())
    try:
        restored = ckpt.restore_latest(abstract_like(state))
    except Exception:
        ckpt.close()
        raise
    kept = describe_checkpoint(None, None)
    if restored is not None:
        step, state, arrays, meta = restored
        before = int(meta.get("num_images", next(iter(arrays.values())).shape[0]))
        if before != run.num_images:
            ckpt.close()
            raise DataError(f"dataset {c.data.name!r} split {c.data.train_split!r} has "
                            f"{run.num_images} images now but had {before} when the checkpoints in "
                            f"{ckpt.directory} were written; restore that dataset, or use a new "
                            f"--workdir (started from this run's network: "
                            f"--config.model.init={run.workdir})")
        loop = LoopState.from_checkpoint(method, arrays, meta)
        kept = describe_checkpoint(meta, step)
        done = finished_run(run, loop, step) if not changes else None
        if done is not None:
            ckpt.close()
            export = run.workdir / "export"
            run.print(f"the run is complete ({c.num_epochs} epoch{'s' if c.num_epochs > 1 else ''}, "
                      f"step {step}): nothing to do; its results are in "
                      f"{run.workdir / 'summary.json'}"
                      + (f" and {export}" if export.is_dir() else "")
                      + " (raise --config.num_epochs to train on)")
            return done
        print(f"resuming from epoch {loop.epoch}, batch {loop.step_in_epoch} ({ckpt.directory})")
    writer = None
    try:
        if run.lead:
            (run.workdir / "config.json").write_text(c.to_json_best_effort(indent=1))
            record_run(c.data.name, c.data.data_dir or None, run.workdir)
            if changes:
                print("resuming with changed settings: " + ", ".join(
                    f"{field} {old!r} -> {new!r}" for field, old, new in changes))
                with open(run.workdir / "config_changes.jsonl", "a") as f:
                    f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "epoch": loop.epoch,
                                        "changes": [list(x) for x in changes]}) + "\n")
        writer = MetricWriter(run.workdir, enabled=run.lead)
        writer.reset(loop.history)

        def save(state, epoch_done: bool) -> None:
            """A checkpoint of `state` and `loop`, never of a diverged state."""
            nonlocal kept
            check_finite(state, loop.partial.get("loss_sum", 0.0) if not epoch_done else 0.0,
                         loop.epoch, loop.step_in_epoch)
            arrays, meta = loop.to_checkpoint(method, epoch_done, run.num_images, c)
            faults.point("checkpoint_save")
            ckpt.save(int(state.step), state, arrays, meta)
            kept = describe_checkpoint(meta, int(state.step))

        def after_batch(state, done: int, steps: int, global_step: int) -> None:
            # Checkpoint timing: on a signal (all processes agree on the batch), and every
            # checkpoint_every_steps global steps. At the epoch's last batch the loop's end-of-epoch
            # checkpoint comes first.
            if run.stop.agreed(done, steps, c.log_every_steps):
                save(state, False)
                raise Interrupted(run.stop.signum, f"training (epoch {loop.epoch}, batch {done})")
            if c.checkpoint_every_steps and global_step % c.checkpoint_every_steps == 0:
                save(state, False)

        for epoch in range(loop.epoch, c.num_epochs):
            loop.epoch = epoch
            if not loop.started:  # a fresh epoch: the method's preparation (DeepCluster: cluster)
                loop.partial, loop.step_in_epoch = {"epoch": epoch}, 0
                state, loop.method_state, fields = method.begin_epoch(state, loop.method_state,
                                                                      epoch)
                loop.partial.update(fields)
                loop.started = True
            state = train_epoch(run, state, loop, writer, after_batch)
            record = epoch_record(method, loop.partial, c.batch_size)
            record.update(periodic_evaluation(run, state, epoch))
            loop.history.append(record)
            save(state, True)
            loop.started = False
            writer.write_epoch(record)
            loop.method_state = method.end_epoch(state, loop.method_state, epoch, loop.history)
            run.print(method.format_record(record) + time_left(loop.history, c.num_epochs))
            if run.stop.agreed(1, 1):  # a signal during the epoch's last batch or its evaluation
                raise Interrupted(run.stop.signum, f"the end of epoch {epoch}")
        final = finish(run, state, loop)
    except Interrupted as e:
        raise e.with_kept(kept) from None
    except Diverged as e:
        raise Diverged(f"{e}: the run diverged; {kept}; rerun with a lower config.optim.lr in a "
                       f"new --workdir") from None
    except Exception as e:
        path = _no_space(e)
        if path is None:
            raise
        raise no_space_error(run, path, state, kept) from None
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            ckpt.close()
    return final


def train_epoch(run: Run, state, loop: LoopState, writer: MetricWriter, after_batch):
    """One epoch of the method's train steps from batch `loop.step_in_epoch`; `loop.partial` keeps
    the epoch's running metric sums (`<metric>_sum`) and time.

    `after_batch(state, done, steps, global_step)` runs after every batch but the last: the loop's
    checkpoint and stop decisions. A non-finite loss raises Diverged.
    """
    c, method, epoch, p = run.config, run.method, loop.epoch, loop.partial
    batches, steps = method.batches(loop.method_state, epoch, loop.step_in_epoch)
    sums = {name: float(p.get(f"{name}_sum", 0.0)) for name in method.metrics}
    time_before, t0 = p.get("time_train", 0.0), time.time()
    global_step = int(state.step)
    for s, batch in enumerate(progress(batches, total=steps - loop.step_in_epoch,
                                       desc=f"training epoch {epoch} ({epoch + 1} of "
                                            f"{c.num_epochs})", images_per_step=c.batch_size),
                              start=loop.step_in_epoch):
        faults.point("train_batch")
        state, m = method.train_step(state, batch, loop.method_state)
        # Device scalars: summing them does not wait for the step.
        for name in method.metrics:
            sums[name] = sums[name] + m[name]
            p[f"{name}_sum"] = sums[name]
        done, global_step = s + 1, global_step + 1
        if done % c.log_every_steps == 0 or done == steps:
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise Diverged(f"loss is {loss} at epoch {epoch}, batch {done}")
            writer.write_scalars(global_step, {"train/loss": loss})
        p["time_train"] = time_before + time.time() - t0
        loop.step_in_epoch = done
        if done < steps:
            after_batch(state, done, steps, global_step)
    for name in method.metrics:
        p[f"{name}_sum"] = float(sums[name])
    p["steps"] = steps
    p["time_train"] = time_before + time.time() - t0
    check_finite(state, p["loss_sum"], epoch, steps)
    return state


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(state, loss_sum, epoch: int, done: int) -> None:
    """Raises Diverged unless the epoch's running loss and every parameter are finite."""
    loss = float(loss_sum)
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} at epoch {epoch} by batch {done}")
    if not bool(_all_finite(state.params)):
        raise Diverged(f"parameters became non-finite at epoch {epoch} by batch {done}")


def epoch_record(method, partial: dict, batch_size: int) -> dict:
    """The epoch's record: the mean of each metric, the method's fields, the training time."""
    steps = max(partial.get("steps", 0), 1)
    record = {"epoch": partial["epoch"]}
    record.update({name: partial.get(f"{name}_sum", 0.0) / steps for name in method.metrics})
    record.update(method.record_fields(partial))
    record["time_train"] = partial.get("time_train", 0.0)
    record["train_images_per_sec"] = steps * batch_size / max(record["time_train"], 1e-9)
    return record


def periodic_evaluation(run: Run, state, epoch: int) -> dict:
    """The evaluators due after `epoch` (config.evals, every `period()` epochs) on the held-out
    split: `<name>_<value>` and `time_<name>` for the epoch record."""
    out: dict = {}
    due = {name: e for name, e in run.evaluators.items() if (epoch + 1) % e.period() == 0}
    if not due:
        return out
    net = run.method.network(state)
    representation = NetworkEmbedding(net, run.method.feature_fn()) if net is not None else None
    # The bank reads the training loop's cached view (same view, the loop's batch); the held-out
    # split has its own cache.
    caches = {"train": (run.view_cache, run.config.batch_size),
              "test": (run.eval_view_cache, run.config.eval.batch_size)}
    splits = Splits(run.source, run.eval_source, run.info,
                    {k: v for k, v in caches.items() if v[0] is not None})
    every = run.config.log_every_steps
    for name, evaluator in due.items():
        t0 = time.time()
        poll = lambda done, total, name=name: run.stop.check(f"the {name} evaluation", done, total,
                                                             every)
        result = evaluator.run(representation, splits, run.mesh, on_batch=poll)
        out.update({f"{name}_{key}": value for key, value in evaluator.values(result).items()})
        out[f"time_{name}"] = time.time() - t0
    run.print_cache_log()
    return out


def finished_run(run: Run, loop: LoopState, step: int) -> dict | None:
    """The summary of a run that trained all its epochs and finished them (summary.json and the
    method's end-of-run files of this checkpoint written), else None: rerunning it with the same
    config has nothing to do (with changed resumable settings its end-of-run steps run again)."""
    if loop.epoch < run.config.num_epochs:
        return None
    try:
        summary = json.loads((run.workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if run.method.finished(step) else None


def finish(run: Run, state, loop: LoopState) -> dict:
    """The method's end-of-run work on the last epoch's record; summary.json."""
    final = dict(loop.history[-1]) if loop.history else {}
    if loop.history:
        final.update(run.method.finish(state, loop.method_state, loop.history))
    if run.lead:
        (run.workdir / "summary.json").write_text(json.dumps(final, indent=1))
    return final


def time_left(history: list[dict], num_epochs: int) -> str:
    """' | N epochs left, about H:MM:SS' from the median time of the last (up to 5) epochs, the
    first epoch (compilation) left out when others exist; '' after the last epoch."""
    left = num_epochs - len(history)
    if left <= 0 or not history:
        return ""
    recent = [sum(v for k, v in r.items() if k.startswith("time_") and isinstance(v, float))
              for r in (history[1:] if len(history) > 1 else history)[-5:]]
    seconds = int(round(sorted(recent)[len(recent) // 2] * left))
    return (f" | {left} epoch{'s' if left > 1 else ''} left, about "
            f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
