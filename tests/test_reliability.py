"""A run is never lost, and every bad input gets one clear line (docs/reliability.md).

Bad input: one line on stderr, exit 2, nothing written. A changed config on an existing workdir is
refused unless every changed field is resumable. One run per workdir. A diverged run exits 3 and
keeps its checkpoints. Signals stop every phase within seconds, and SIGKILLs at random moments
still resume to the uninterrupted run's parameters and metrics.
"""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, make_config
from PIL import Image
from test_train import final_params

from dcjax import cli, config_lib, validation
from dcjax.checkpoint import Checkpointer, CheckpointError, CheckpointMismatch
from dcjax.config_lib import (
    FROZEN,
    RESUMABLE,
    ConfigError,
    is_resumable,
    load_config_file,
    resume_changes,
)
from dcjax.data import images, pipeline
from dcjax.data.datasets import DataError
from dcjax.data.importer import prepare
from dcjax.stopping import Diverged
from dcjax.workdir import WorkdirError, WorkdirLock, check_workdir

CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def smoke(**overrides):
    return make_config(**{"log_every_steps": 5, **overrides})


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (the lock file aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def cli_run(*args, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "dcjax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(proc, code=2, contains=""):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert contains in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- resume policy


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_field_is_frozen_or_resumable(path):
    assert not set(FROZEN) & set(RESUMABLE)
    for arg in (None, "smoke", "cpu"):
        try:
            c = load_config_file(str(path), arg)
        except Exception:  # noqa: BLE001 - a config without that variant
            continue
        missing = [f for f in cli.config_fields(c)
                   if not config_lib.is_frozen(f) and not is_resumable(f)]
        assert not missing, f"{path.name}:{arg}: classify {missing} in config_lib.FROZEN/RESUMABLE"


def test_resume_changes_split_frozen_from_resumable():
    saved = json.loads(smoke().to_json_best_effort())
    frozen, allowed = resume_changes(saved, smoke(**{"clustering.k": 30, "num_epochs": 9,
                                                      "clustering.backend": "faiss"}))
    assert frozen == [("clustering.k", 10, 30)]
    assert allowed == [("clustering.backend", "jax", "faiss"), ("num_epochs", 1, 9)]
    # A field an older run's config.json lacks counts as its default.
    del saved["clustering"]["precision"]
    assert resume_changes(saved, smoke()) == ([], [])
    assert resume_changes(saved, smoke(**{"data.crop_scale": (0.5, 1.0)}))[0][0][0] == \
        "data.crop_scale"


# ----------------------------------------------------------------------------- one-line errors


def test_unknown_fields_and_bad_config_files_are_diagnosed(tmp_path):
    digits = "--config=configs/digits.py"
    os.chdir(ROOT)
    message = cli.diagnose(["m", digits, "--config.clustering.kk=3"])
    assert "config.clustering.kk" in message and "did you mean config.clustering.k" in message
    assert "config.clustering.k" in cli.diagnose(["m", digits, "--config.clusterin.k=3"])
    assert cli.diagnose(["m", digits, "--config.clustering.k=3", "--config.model.widths=(1,2)"]) \
        is None
    assert "does not exist" in cli.diagnose(["m", "--config=configs/nope.py"])
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    x = 1\n    return undefined_name\n")
    message = cli.diagnose(["m", f"--config={bad}"])
    assert "NameError" in message and f"{bad}, line 3" in message


@pytest.mark.parametrize("overrides, text", [
    ({"optim.lr": float("inf")}, "config.optim.lr=inf"),
    ({"optim.lr": float("nan")}, "config.optim.lr=nan"),
    ({"optim.weight_decay": float("inf")}, "config.optim.weight_decay=inf"),
    ({"clustering.k": 1}, "k >= 2"),
])
def test_non_finite_rates_and_a_single_cluster_are_refused(overrides, text):
    with pytest.raises(ConfigError, match=re.escape(text)):
        validation.validate(smoke(**overrides))


def test_pca_dim_above_the_number_of_images_is_refused():
    c = smoke(**{"clustering.pca_dim": 60, "model.fc_dim": 64, "clustering.k": 10,
                 "batch_size": 32})
    with pytest.raises(ConfigError, match="pca_dim=60 but the dataset 'digits' has 50 images"):
        config_lib.validate_against_data(c, {"train": 50, "test": 10})


def test_workdir_checks(tmp_path):
    with pytest.raises(WorkdirError, match="--workdir is empty"):
        check_workdir("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        check_workdir(str(tmp_path / "file"))
    with pytest.raises(WorkdirError, match="is a file"):
        check_workdir(str(tmp_path / "file" / "run"))
    assert check_workdir(str(tmp_path / "new" / "run")) == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.slow
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path):
    """Each case through the real command line, with a finished run's workdir beside it."""
    done = tmp_path / "done"
    first = cli_run("--config=configs/digits.py:smoke", f"--workdir={done}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(done)
    (tmp_path / "file").write_text("x")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return undefined_name\n")
    smoke_cfg = "--config=configs/digits.py:smoke"
    fresh = tmp_path / "fresh"
    readonly = "/sys/dcjax_readonly" if os.geteuid() == 0 else str(tmp_path / "ro" / "run")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
    cases = [
        ((smoke_cfg, f"--workdir={done}", "--config.clustering.k=30"), "clustering.k: 10 in the run"),
        ((smoke_cfg, f"--workdir={done}", "--config.clustering.kk=3"), "did you mean"),
        (("--config=configs/nope.py", f"--workdir={fresh}"), "does not exist"),
        ((f"--config={bad}", f"--workdir={fresh}"), "line 2"),
        ((smoke_cfg, "--workdir="), "--workdir is empty"),
        ((smoke_cfg,), "--workdir"),
        ((smoke_cfg, f"--workdir={tmp_path / 'file'}"), "is a file"),
        ((smoke_cfg, f"--workdir={readonly}"), "--workdir="),
        ((smoke_cfg, f"--workdir={fresh}", "--config.optim.lr=inf"), "finite"),
        ((smoke_cfg, f"--workdir={fresh}", "--config.clustering.k=1"), "k >= 2"),
        ((smoke_cfg, f"--workdir={fresh}", "--config.clustering.k=abc"), "clustering.k"),
        ((smoke_cfg, f"--workdir={fresh}", "--config.data.name=nope"), "not found"),
    ]
    for args, text in cases:
        assert_one_line_error(cli_run(*args), 2, text)
        assert not fresh.exists()
    assert snapshot(done) == before


@pytest.mark.slow
def test_changed_k_on_a_finished_workdir_changes_nothing_and_resumable_changes_are_logged(tmp_path):
    first = cli_run("--config=configs/digits.py:smoke", f"--workdir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path)
    refused = cli_run("--config=configs/digits.py:smoke", f"--workdir={tmp_path}",
                      "--config.clustering.k=30", "--config.seed=3")
    line = assert_one_line_error(refused, 2, "use a new --workdir")
    assert "clustering.k: 10 in the run, 30 now" in line and "seed: 31 in the run, 3 now" in line
    assert snapshot(tmp_path) == before  # checkpoints, metrics.jsonl, summary.json byte-identical
    more = cli_run("--config=configs/digits.py:smoke", f"--workdir={tmp_path}",
                   "--config.num_epochs=2", "--config.clustering.backend=faiss")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming with changed settings" in more.stdout and "num_epochs 1 -> 2" in more.stdout
    change = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
    assert ["num_epochs", 1, 2] in change["changes"]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] \
        == [0, 1]


# ----------------------------------------------------------------------------- the workdir lock


def test_second_run_on_a_locked_workdir_is_refused_naming_the_holder(tmp_path):
    from dcjax.train import train_and_evaluate

    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirError, match=f"in use by another run .*pid {os.getpid()}"):
            train_and_evaluate(smoke(), str(tmp_path))
        with pytest.raises(WorkdirError, match="in use"):
            WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / "checkpoints").exists()
    WorkdirLock(tmp_path).acquire().release()  # released on exit


def test_lock_of_a_killed_process_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dcjax.workdir import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirError, match=f"pid {holder.pid}"):
        WorkdirLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    WorkdirLock(tmp_path).acquire().release()


# ----------------------------------------------------------------------------- checkpoints


def _tiny_state(k: int):
    return {"params": {"w": jnp.ones((4, k)), "b": jnp.zeros((k,))}, "step": jnp.int32(0)}


def _save(ckpt, step, k=3):
    ckpt.save(step, _tiny_state(k), {"assignment": np.zeros(5, np.int32)}, {"epoch": step})


def test_checkpoint_of_other_shapes_is_a_mismatch_and_nothing_is_moved(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck")
    _save(ckpt, 1)
    _save(ckpt, 2)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointMismatch,
                       match=r"2 differ, e.g. params/b: checkpoint \(3,\), config \(7,\)"):
        ckpt.restore_latest(_tiny_state(7))
    assert snapshot(tmp_path) == before
    ckpt.close()


def _damage(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")


def test_unreadable_checkpoints_are_set_aside_never_deleted(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck")
    for step in (1, 2, 3):
        _save(ckpt, step)
    _damage(tmp_path / "ck" / "3")
    step, _, _, meta = ckpt.restore_latest(_tiny_state(3))
    assert step == 2 and meta["epoch"] == 2
    aside = list((tmp_path / "ck" / "unreadable").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["3"] and (aside[0] / "state").is_dir()
    _save(ckpt, 3)  # the step can be written again; the unreadable copy stays aside
    assert ckpt.steps() == [1, 2, 3] and aside[0].exists()
    assert ckpt.save(3, _tiny_state(3), {"assignment": np.zeros(5, np.int32)}, {}) is False
    ckpt.close()


def test_no_readable_checkpoint_is_an_error_and_all_stay(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck")
    for step in (1, 2):
        _save(ckpt, step)
        _damage(tmp_path / "ck" / str(step))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint .* can be read"):
        ckpt.restore_latest(_tiny_state(3))
    assert snapshot(tmp_path) == before
    ckpt.close()


def _npz_dataset(tmp_path, name, n):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 12, 12), dtype=np.uint8)
    path = tmp_path / f"{name}_{n}.npz"
    np.savez(path, x_train=x, y_train=np.arange(n) % 4)
    prepare(str(path), name, os.environ["DCJAX_DATA_DIR"], overwrite=True,
            class_names=["a", "b", "c", "d"], verbose=False)


@pytest.mark.slow
def test_dataset_changed_since_the_checkpoint_is_refused(tmp_path):
    from dcjax.train import train_and_evaluate

    c = smoke(**{"data.name": "changing", "data.eval_split": "", "pixel_baseline": False,
                 "clustering.k": 4, "clustering.pca_dim": 8, "batch_size": 16})
    _npz_dataset(tmp_path, "changing", 40)
    train_and_evaluate(c, str(tmp_path / "run"))
    before = snapshot(tmp_path / "run")
    from dcjax.data.datasets import runs_using

    assert runs_using("changing", None) == [str((tmp_path / "run").absolute())]  # the run is named
    _npz_dataset(tmp_path, "changing", 47)
    with pytest.raises(DataError, match="has 47 images now but had 40"):
        train_and_evaluate(c, str(tmp_path / "run"))
    assert snapshot(tmp_path / "run") == before
    # export refuses as the run does, instead of re-clustering other images, and points to predict
    from dcjax.export import export_checkpoint

    with pytest.raises(DataError, match=r"has 47 images now but had 40 when checkpoint \d+ of .* "
                                        r"was written: its clusters are those of the old images. "
                                        r"New images get them without training: python -m "
                                        r"dcjax.predict"):
        export_checkpoint(str(tmp_path / "run"))
    assert snapshot(tmp_path / "run") == before


# ----------------------------------------------------------------------------- divergence


@pytest.mark.slow
def test_divergence_keeps_the_finished_epochs(tmp_path, monkeypatch):
    """The loss turns NaN in epoch 1: Diverged names it, epoch 0 and its checkpoint stay, and a
    rerun stops the same way without changing anything."""
    from dcjax import train
    from dcjax.methods import deepcluster

    original = deepcluster.make_train_step

    def poisoned(model, config, *args):
        step = original(model, config, *args)

        def wrapped(state, images, labels, key):
            new, m = step(state, images, labels, key)
            bad = state.step >= 50
            return new, dict(m, loss=jnp.where(bad, jnp.nan, m["loss"]))

        return wrapped

    monkeypatch.setattr(deepcluster, "make_train_step", poisoned)
    c = smoke(num_epochs=2, pixel_baseline=False)
    with pytest.raises(Diverged, match=r"loss is nan at epoch 1, batch 10: the run diverged; the "
                                       r"last checkpoint \(end of epoch 0, step 44\) is kept"):
        train.train_and_evaluate(c, str(tmp_path))
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]
    before = snapshot(tmp_path / "checkpoints")
    with pytest.raises(Diverged, match="epoch 1, batch 10"):
        train.train_and_evaluate(c, str(tmp_path))
    assert snapshot(tmp_path / "checkpoints") == before
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


@pytest.mark.slow
def test_divergence_exits_3_with_one_line(tmp_path):
    args = ("--config=configs/digits.py:smoke", f"--workdir={tmp_path}", "--config.optim.lr=1e4")
    for _ in range(2):
        line = assert_one_line_error(cli_run(*args), 3, "loss is nan at epoch 0")
        assert "lower config.optim.lr" in line


# ----------------------------------------------------------------------------- images


def _png(array, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_not_clipped(fmt):
    ramp = (np.arange(16 * 20, dtype=np.uint32).reshape(16, 20) * 200).astype(np.uint16)
    decoded = pipeline.decode_image(_png(ramp, format=fmt))
    assert decoded.shape == (16, 20, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[..., 0], ramp >> 8)
    assert decoded.mean() < 200  # clipping would give ~255 almost everywhere


def test_exif_orientation_is_applied_at_import_and_read(tmp_path):
    left_red = np.zeros((20, 40, 3), np.uint8)
    left_red[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(left_red).save(buf, format="JPEG", quality=95, exif=exif)
    shown = pipeline.decode_image(buf.getvalue())
    assert shown.shape == (40, 20, 3)
    assert shown[:20, :, 0].mean() > 200 and shown[20:, :, 0].mean() < 50  # red on top
    from dcjax.data.sources import checked_image_bytes

    stored = images.decode_bytes(checked_image_bytes(buf.getvalue()))
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.size == (40, 20)  # the file itself is stored sideways
    assert stored.shape == shown.shape  # stored upright
    assert np.abs(stored.astype(int) - shown.astype(int)).mean() < 3  # re-encoded JPEG q95


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "RGBA", "L"])
def test_other_modes_decode_as_convert_rgb(mode):
    rgb = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    np.testing.assert_array_equal(pipeline.decode_image(buf.getvalue()),
                                  np.asarray(im.convert("RGB")))


def test_import_reports_decode_errors_with_file_and_reason(tmp_path):
    d = tmp_path / "imgs" / "train" / "a"
    d.mkdir(parents=True)
    ramp = (np.arange(12 * 12, dtype=np.uint32).reshape(12, 12) * 400).astype(np.uint16)
    (d / "wide.png").write_bytes(_png(ramp))
    (d / "ok.png").write_bytes(_png(np.zeros((12, 12, 3), np.uint8)))
    (d / "garbage.jpg").write_bytes(b"not an image at all")
    (d / "cut.png").write_bytes(_png(np.ones((30, 30, 3), np.uint8) * 7)[:60])
    report = prepare(str(tmp_path / "imgs"), "decode_errors", str(tmp_path / "tfds"), verbose=False)
    assert report.total("train") == 2
    reasons = dict(report.skipped)
    assert set(reasons) == {"train/a/garbage.jpg", "train/a/cut.png"}
    assert all("0x" not in r and r for r in reasons.values()), reasons
    assert "cannot identify" in reasons["train/a/garbage.jpg"]
    from dcjax.data.datasets import open_split

    source, _ = open_split("decode_errors", "train", str(tmp_path / "tfds"))
    wide = [source[i] for i in range(len(source)) if source[i]["id"].decode().endswith("wide.png")]
    np.testing.assert_array_equal(pipeline.decode_image(wide[0]["image"])[..., 0], ramp >> 8)


# ----------------------------------------------------------------------------- unlabeled runs


def test_report_and_plots_on_an_unlabeled_run(tmp_path):
    """An unlabeled run's report has no always-empty label columns and shows the label-free
    signals; its NMI plot has no empty label panel; --signals compares the signals with
    nmi_labels on a labelled run."""
    from dcjax.plots import plot_nmi
    from dcjax.report import report, signals_table

    records = [{"epoch": e, "loss": 2.0 - e / 10, "nmi_labels": None, "ari_labels": None,
                "acc_labels": None, "nmi_prev": None if e == 0 else 0.5,
                "pixel_agreement": 0.6 - e / 10, "cohesion_median": 0.3 + e / 20}
               for e in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "summary.json").write_text(json.dumps({**records[-1], "final_nmi_labels": None,
                                                       "final_kmeans_objective": 12.5}))
    text = report(tmp_path)
    header = text.splitlines()[0]
    assert "nmi_labels" not in header and "ari_labels" not in header and "knn_top1" not in header
    assert "pixel_agreement" in header and "cohesion_median" in header and "| 0.400 |" in text
    assert text.count("\n| ") == 3 and "final_nmi_labels = -" in text and "no labels" in text
    plot_nmi(records, tmp_path / "nmi.png")
    from PIL import Image

    width, _ = Image.open(tmp_path / "nmi.png").size
    assert width == 1000  # two panels (nmi_prev, label-free signals) of 5 inches at 100 dpi
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "metrics.jsonl").write_text("".join(json.dumps(
        {**r, "nmi_labels": 0.1 + r["epoch"] / 10}) + "\n" for r in records))
    rows = signals_table([str(labelled)]).splitlines()
    assert "| labelled | pixel_agreement | 3 | 0.600 -> 0.400 | 0.100 -> 0.300 | -1.00 |" in rows
    assert "| labelled | cohesion_median | 3 | 0.300 -> 0.400 | 0.100 -> 0.300 | +1.00 |" in rows


# ----------------------------------------------------------------------------- signals and kills


def metrics_without_times(workdir):
    return [{k: v for k, v in json.loads(line).items()
             if not k.startswith("time_") and "per_sec" not in k}
            for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]


FAULT_LINE = re.compile(r"dcjax fault injection: (\S+) at (\S+) #(\d+), t=([\d.]+)")


@pytest.mark.slow
def test_faults_in_every_phase_resume_to_the_uninterrupted_result(tmp_path):
    """SIGTERM / SIGINT in extraction, PCA, k-means and training stop the run within seconds;
    then at least 8 SIGKILLs at seeded random moments (extraction, k-means, training, checkpoint
    writing). Resumed after each, the run ends with the clean run's parameters and metrics."""
    args = ("--config=configs/digits.py:smoke", "--config.num_epochs=4",
            "--config.checkpoint_every_steps=7")
    clean = cli_run(*args, f"--workdir={tmp_path / 'clean'}")
    assert clean.returncode == 0, clean.stderr[-3000:]
    rng = np.random.default_rng(2026)
    faults = [f"extract_batch:{rng.integers(2, 40)}:0:TERM", "pca:1:0:INT",
              f"kmeans_iteration:{rng.integers(1, 5)}:0:TERM",
              f"train_batch:{rng.integers(2, 8)}:0:INT"]
    # 4 epochs of 44 batches: enough work left that every kill below finds its moment.
    choices = [("extract_batch", 40), ("kmeans_iteration", 5), ("train_batch", 8),
               ("checkpoint_save", 2)]
    for _ in range(10):
        point, most = choices[rng.integers(len(choices))]
        delay = rng.uniform(0, 0.4) if point == "checkpoint_save" else rng.uniform(0, 0.05)
        faults.append(f"{point}:{rng.integers(1, most + 1)}:{delay:.3f}:KILL")
    workdir = tmp_path / "faulty"
    kills, stops = 0, 0
    for spec in faults:
        proc = cli_run(*args, f"--workdir={workdir}", env_extra={"DCJAX_FAULT": spec})
        end = time.time()
        sent = FAULT_LINE.search(proc.stderr)
        if spec.endswith("KILL"):
            assert proc.returncode in (-signal.SIGKILL, 0), (spec, proc.stderr[-3000:])
            kills += proc.returncode == -signal.SIGKILL
        else:
            signum = signal.SIGTERM if spec.endswith("TERM") else signal.SIGINT
            assert proc.returncode == 128 + signum, (spec, proc.stderr[-3000:])
            assert sent is not None and end - float(sent.group(4)) < 10, (spec, proc.stderr[-2000:])
            assert "rerun the same command to resume" in proc.stderr
            stops += 1
    assert stops == 4 and kills >= 8, (stops, kills)
    final = cli_run(*args, f"--workdir={workdir}")
    assert final.returncode == 0, final.stderr[-3000:]
    step_a, params_a = final_params(tmp_path / "clean")
    step_b, params_b = final_params(workdir)
    assert step_a == step_b == 176
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), params_a,
                 params_b)
    assert metrics_without_times(tmp_path / "clean") == metrics_without_times(workdir)
    summary = [json.loads(Path(d, "summary.json").read_text()) for d in (tmp_path / "clean", workdir)]
    assert {k: v for k, v in summary[0].items() if not k.startswith("time_") and "per_sec" not in k} \
        == {k: v for k, v in summary[1].items() if not k.startswith("time_") and "per_sec" not in k}
