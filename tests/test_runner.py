"""The runner is method-agnostic: a second method, defined here in one class, runs through it with
checkpoints, SIGKILLs and an exact resume; a full disk is one line and exit 4 (docs/reliability.md).

The method: fixed pseudo-labels from k-means (scikit-learn) on the raw pixels of the deterministic
view, computed before the first epoch and kept only in the method state (so a resumed run must get
them from the checkpoint); each epoch trains the network on every image once, in an order drawn
from (seed, epoch). Run as a script (`python tests/test_runner.py WORKDIR EPOCHS`), it trains with
it through the runner: the SIGKILL test needs a process to kill.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, make_config  # noqa: E402

from dcjax import methods, metrics, runner  # noqa: E402
from dcjax.data import pipeline  # noqa: E402
from dcjax.methods.base import Method  # noqa: E402
from dcjax.models import from_config  # noqa: E402
from dcjax.step import create_train_state, make_train_step  # noqa: E402
from dcjax.stopping import NoSpace  # noqa: E402

PIXEL_SIDE = 8  # the pixels k-means reads: the centre view shrunk to 8x8 grey


@methods.register("pixel_kmeans_labels")
class PixelKMeansLabels(Method):
    metrics = ("loss", "accuracy")
    record_keys = ("labels_nmi",)

    def __init__(self, run):
        super().__init__(run)
        c = run.config
        self.model = from_config(c, c.clustering.k)
        self._step = jax.jit(make_train_step(self.model, c, len(run.source) // c.batch_size),
                             donate_argnums=0)

    def init_state(self):
        c = self.run.config
        return jax.jit(lambda: create_train_state(self.model, c, jax.random.key(c.seed)),
                       out_shardings=self.run.replicated)()

    def state_to_checkpoint(self, labels, epoch_done):
        return {"labels": labels.astype(np.int32)}

    def state_from_checkpoint(self, arrays, epoch_done):
        return arrays["labels"]

    def pixel_labels(self) -> np.ndarray:
        from sklearn.cluster import KMeans

        run, view = self.run, pipeline.view_config(self.run.config)
        x = np.stack([pipeline.center_view(pipeline.decode_image(run.source[i]["image"]), view)
                      .mean(-1)[::view.image_size // PIXEL_SIDE, ::view.image_size // PIXEL_SIDE]
                      .ravel() for i in range(run.num_images)]).astype(np.float32)
        km = KMeans(run.config.clustering.k, n_init=1, random_state=run.config.seed).fit(x)
        return km.labels_.astype(np.int32)

    def begin_epoch(self, state, labels, epoch):
        fields = {}
        if labels is None:
            labels = self.pixel_labels()
            true = np.array([self.run.source[i]["label"] for i in range(self.run.num_images)])
            fields["labels_nmi"] = metrics.nmi(true, labels)
        return state, labels, fields

    def batches(self, labels, epoch, start_batch):
        c = self.run.config
        order = np.random.default_rng([c.seed, epoch]).permutation(self.run.num_images)
        batches = pipeline.train_batches(self.run.source, order, pipeline.view_config(c),
                                         c.batch_size, seed=c.seed + epoch, start_batch=start_batch,
                                         decoder=c.data.decoder, **self.run.loader_options())
        return batches, len(order) // c.batch_size

    def train_step(self, state, batch, labels):
        images = self.run.global_array(batch["image"])
        targets = self.run.global_array(labels[batch["index"]])
        return self._step(state, images, targets, self.run.train_key)


def toy_config(num_epochs: int = 1, **overrides):
    c = make_config(**{"method": "pixel_kmeans_labels", "num_epochs": num_epochs,
                       "data.eval_split": "", "pixel_baseline": False, "log_every_steps": 5,
                       **overrides})
    return c


def params_and_records(workdir: Path):
    from test_train import final_params

    step, params = final_params(workdir)
    records = [{k: v for k, v in json.loads(line).items()
                if not k.startswith("time_") and "per_sec" not in k}
               for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return step, params, records


@pytest.mark.slow
def test_a_method_defined_outside_the_package_runs_through_the_runner(tmp_path):
    """Its records carry its own fields, its state is checkpointed as its own arrays, and a rerun
    of the finished run resumes from that state without training again."""
    c = toy_config(2)
    final = runner.train_and_evaluate(c, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert 0.2 < records[0]["labels_nmi"] < 1.0  # pixel clusters agree with the digits, not fully
    assert records[1]["labels_nmi"] is None  # computed once, before the first epoch
    assert records[1]["loss"] < records[0]["loss"]  # the network learns the fixed labels
    assert final["epoch"] == 1 and json.loads((tmp_path / "summary.json").read_text())["epoch"] == 1
    meta = json.loads(next((tmp_path / "checkpoints").glob("*/meta/metadata")).read_text())
    assert meta["method"] == "pixel_kmeans_labels"
    assert "assignment" not in meta and "clustering.k" not in meta
    again = runner.train_and_evaluate(c, str(tmp_path))
    assert again == final


def test_an_unknown_method_is_a_config_error_naming_the_known_ones():
    with pytest.raises(methods.ConfigError, match=r"config.method: 'nope' is not a method; "
                                                  r"known: deepcluster"):
        methods.get("nope")


def test_pca_dim_above_the_models_feature_width_is_refused_before_anything_is_written(tmp_path):
    c = make_config(**{"clustering.pca_dim": 80})  # the smoke network's fc7 has 64 dims
    with pytest.raises(methods.ConfigError, match=r"config.clustering.pca_dim=80 exceeds the width "
                                                  r"of the clustered features \(64, "
                                                  r"alexnet_small's fc7\)"):
        runner.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigkills_resume_the_second_method_exactly(tmp_path):
    """SIGKILLs in training and in checkpoint writing, then a clean finish: the same parameters
    and records as the uninterrupted run."""
    def launch(workdir, fault=None):
        env = dict(os.environ, **({"DCJAX_FAULT": fault} if fault else {}))
        return subprocess.run([sys.executable, __file__, str(workdir), "3"], cwd=ROOT,
                              capture_output=True, text=True, env=env, timeout=600)

    clean = launch(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    faulty = tmp_path / "faulty"
    # 44 batches an epoch, checkpoints every 7 steps: kills in epochs 0, 1 and 2, one of them
    # inside a checkpoint write.
    for fault in ("train_batch:30:0:KILL", "checkpoint_save:3:0.02:KILL", "train_batch:40:0:KILL"):
        proc = launch(faulty, fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-3000:])
    proc = launch(faulty)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall("resuming from epoch", proc.stdout)) == 1
    step_a, params_a, records_a = params_and_records(tmp_path / "clean")
    step_b, params_b, records_b = params_and_records(faulty)
    assert step_a == step_b == 3 * 44
    assert records_a == records_b
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params_a, params_b)


@pytest.mark.slow
def test_a_full_disk_is_one_error_naming_the_path_and_the_run_resumes(tmp_path, monkeypatch):
    """The second checkpoint write finds the disk full (as TensorStore reports it): NoSpace names
    the workdir, the space a checkpoint takes and the checkpoint kept; the checkpoint before it is
    intact and a rerun ends where an undisturbed run does."""
    from dcjax.checkpoint import Checkpointer

    c = toy_config(2, checkpoint_every_steps=0)
    clean = runner.train_and_evaluate(c, str(tmp_path / "clean"))
    original, calls = Checkpointer.save, []

    def full(self, step, *args):
        calls.append(step)
        if len(calls) == 2:
            raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{self.directory}/'
                             f'{step}.orbax-checkpoint-tmp/state": No space left on device '
                             f"[os_error_code='28']")
        return original(self, step, *args)

    monkeypatch.setattr(Checkpointer, "save", full)
    with pytest.raises(NoSpace, match=r"no space left on the device of .*run \([\d.,]+ MiB free; "
                                      r"each checkpoint of this run takes about [\d.,]+ MiB\): the "
                                      r"last checkpoint \(end of epoch 0, step 44\) is kept; free "
                                      r"space .* rerun the same command to resume"):
        runner.train_and_evaluate(c, str(tmp_path / "run"))
    monkeypatch.setattr(Checkpointer, "save", original)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["44"]
    assert runner.train_and_evaluate(c, str(tmp_path / "run"))["loss"] == clean["loss"]


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_exit_4_and_loses_nothing(tmp_path):
    """The workdir on a 900 KiB tmpfs (needs permission to mount; skipped without): the digits
    smoke run fills it in its second epoch. One `error:` line and exit 4, none of the writer
    threads' tracebacks; with room again the rerun resumes and ends where a run on a large disk
    does."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        args = [sys.executable, "-m", "dcjax.main", "--config=configs/digits.py:smoke",
                "--config.num_epochs=6"]
        proc = subprocess.run(args + [f"--workdir={small / 'run'}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 4, proc.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: no space left on the device of "), \
            proc.stderr[-3000:]
        assert "is kept; free space" in lines[0]
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        proc = subprocess.run(args + [f"--workdir={small / 'run'}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0 and "resuming from epoch" in proc.stdout, proc.stderr[-3000:]
        clean = subprocess.run(args + [f"--workdir={tmp_path / 'clean'}"], cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
        assert clean.returncode == 0, clean.stderr[-3000:]
        assert params_and_records(small / "run")[2] == params_and_records(tmp_path / "clean")[2]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


if __name__ == "__main__":
    os.environ.setdefault("DCJAX_DATA_DIR", str(Path(sys.argv[1]).parent / "tfds"))
    from dcjax.data.importer import ensure_embedded

    ensure_embedded("digits", os.environ["DCJAX_DATA_DIR"])
    config = toy_config(int(sys.argv[2]), checkpoint_every_steps=7)
    try:
        runner.train_and_evaluate(config, sys.argv[1])
    except runner.Interrupted as e:  # not expected here; reported as the CLI does
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
