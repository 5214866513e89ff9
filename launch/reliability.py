r"""Tries every bad input and fault of docs/reliability.md and prints its table.

    python launch/reliability.py [--out=docs/reliability_table.md]

Each case runs the real command line in a fresh process on the digits smoke config, with a
finished run's workdir beside it; a row gives the case, the exit code, the line the user sees and
what happened on disk (every file's sha256 before and after; the lock file aside). Takes about 10
minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dcjax.writers import markdown_table  # noqa: E402

SMOKE = "--config=configs/digits.py:smoke"


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def disk_change(before: dict, after: dict) -> str:
    """What changed, in words: files moved (same bytes elsewhere), checkpoint steps rotated out
    by keep_checkpoints, files lost, rewritten and added."""
    if before == after:
        return "nothing written" if not before else "unchanged (every file byte-identical)"
    gone = [f for f in before if f not in after]
    added = [f for f in after if f not in before]
    changed = [f for f in before if f in after and before[f] != after[f]]
    aside = {after[f] for f in added if f.startswith("checkpoints/unreadable/")}
    moved = [f for f in gone if before[f] in aside and not f.startswith("checkpoints/unreadable/")]
    partial = [f for f in gone if ".orbax-checkpoint-tmp" in f]
    step_of = lambda f: f.split("/")[1] if f.startswith("checkpoints/") and f.count("/") > 1 else ""
    kept_steps = {step_of(f) for f in after if step_of(f).isdigit()}
    rotated = sorted({step_of(f) for f in gone if f not in moved and step_of(f).isdigit()
                      and step_of(f) not in kept_steps}, key=int)
    lost = [f for f in gone if f not in moved and f not in partial and step_of(f) not in rotated]
    parts = []
    if moved:
        where = sorted({f.split("/")[2] for f in added if f.startswith("checkpoints/unreadable/")})
        parts.append(f"damaged checkpoint moved to checkpoints/unreadable/{where[0]} "
                     f"({len(moved)} files)")
    if partial:
        parts.append("the killed, half-written checkpoint's Orbax tmp folder cleaned up")
    if rotated:
        parts.append(f"old checkpoint(s) {', '.join(rotated)} rotated out (keep_checkpoints=3)")
    if lost:
        parts.append(f"**{len(lost)} file(s) lost** ({', '.join(sorted(lost)[:3])})")
    if changed:
        parts.append(f"{len(changed)} rewritten ({', '.join(sorted(changed)[:3])})")
    if added:
        tops = sorted({f.split("/")[0] + ("/" if "/" in f else "") for f in added})
        parts.append(f"{len(added)} added ({', '.join(tops[:5])})")
    return "; ".join(parts)


def shown_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
             if ln.startswith(("error: ", "interrupted: ", "warning: checkpoint", "final "))]
    if "Traceback" in proc.stderr:
        return "TRACEBACK: " + proc.stderr.strip().splitlines()[-1]
    if proc.returncode < 0:
        return f"(killed by signal {-proc.returncode}, as injected)"
    return lines[0] if lines else (proc.stdout.strip().splitlines() or ["(no output)"])[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dcjax_reliability_"))
    env = dict(os.environ, DCJAX_DATA_DIR=str(tmp / "tfds"), TF_CPP_MIN_LOG_LEVEL="2")

    def run(*argv, extra_env=None, module="dcjax.main"):
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, text=True,
                              capture_output=True, env=dict(env, **(extra_env or {})))

    rows = []

    def case(name: str, workdir: Path, *argv, extra_env=None, module="dcjax.main", show=None):
        before = snapshot(workdir)
        t0 = time.time()
        proc = run(*argv, extra_env=extra_env, module=module)
        line = show(proc) if show else shown_line(proc)
        line = re.sub(re.escape(str(tmp)), "TMP", line)
        rows.append((name, proc.returncode, line, disk_change(before, snapshot(workdir)),
                     time.time() - t0))
        print(f"{name}: rc {proc.returncode} ({time.time() - t0:.0f} s)", file=sys.stderr)
        return proc

    done = tmp / "done"
    first = run(SMOKE, f"--workdir={done}")
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp / "file").write_text("x")
    bad = tmp / "bad.py"
    bad.write_text("def get_config():\n    return undefined_name\n")
    fresh = tmp / "fresh"

    case("changed k on a finished workdir", done, SMOKE, f"--workdir={done}",
         "--config.clustering.k=30")
    case("changed seed and learning rate", done, SMOKE, f"--workdir={done}", "--config.seed=3",
         "--config.optim.lr=0.01")
    case("unknown field", done, SMOKE, f"--workdir={done}", "--config.clustering.kk=3")
    case("unknown section", done, SMOKE, f"--workdir={done}", "--config.clusterin.k=3")
    case("value of the wrong type", fresh, SMOKE, f"--workdir={fresh}", "--config.clustering.k=abc")
    case("missing config file", fresh, "--config=configs/nope.py", f"--workdir={fresh}")
    case("config file that raises", fresh, f"--config={bad}", f"--workdir={fresh}")
    case("no --workdir", fresh, SMOKE)
    case("empty --workdir", ROOT / "checkpoints", SMOKE, "--workdir=")
    case("workdir is a file", tmp / "file", SMOKE, f"--workdir={tmp / 'file'}")
    ro = "/sys/dcjax_readonly" if os.geteuid() == 0 else str(tmp / "ro" / "run")
    if os.geteuid() != 0:
        (tmp / "ro").mkdir(mode=0o500)
    case("workdir not writable", fresh, SMOKE, f"--workdir={ro}")
    case("lr = inf", fresh, SMOKE, f"--workdir={fresh}", "--config.optim.lr=inf")
    case("weight decay = nan", fresh, SMOKE, f"--workdir={fresh}",
         "--config.optim.weight_decay=nan")
    case("k = 1", fresh, SMOKE, f"--workdir={fresh}", "--config.clustering.k=1")
    case("k above the number of images", fresh, SMOKE, f"--workdir={fresh}",
         "--config.clustering.k=5000")
    case("unknown dataset", fresh, SMOKE, f"--workdir={fresh}", "--config.data.name=nope")

    # pca_dim above the number of images, and a dataset re-imported with more images.
    rng = np.random.default_rng(0)
    small = tmp / "small"

    def import_npz(n: int):
        path = tmp / f"small_{n}.npz"
        np.savez(path, x_train=rng.integers(0, 255, (n, 12, 12), dtype=np.uint8),
                 y_train=np.arange(n) % 4)
        p = run(f"--source={path}", "--name=small", "--overwrite", "--class_names=a,b,c,d",
                module="dcjax.data.prepare")
        assert p.returncode == 0, p.stderr[-2000:]

    import_npz(40)
    small_args = (SMOKE, f"--workdir={small}", "--config.data.name=small",
                  "--config.data.eval_split=", "--config.pixel_baseline=false",
                  "--config.clustering.k=4", "--config.batch_size=16")
    case("pca_dim above the number of images", small, *small_args,
         "--config.clustering.pca_dim=60", "--config.model.fc_dim=64")
    assert run(*small_args, "--config.clustering.pca_dim=8").returncode == 0
    import_npz(47)
    case("dataset re-imported with other images", small, *small_args,
         "--config.clustering.pca_dim=8")

    # A second run on a workdir in use.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from dcjax.workdir import WorkdirLock; "
         f"WorkdirLock({str(done)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    holder.stdout.readline()
    case("second run on a workdir in use", done, SMOKE, f"--workdir={done}")
    holder.kill()
    holder.wait()

    # A corrupt latest checkpoint.
    corrupt = tmp / "corrupt"
    assert run(SMOKE, f"--workdir={corrupt}", "--config.checkpoint_every_steps=20").returncode == 0
    latest = max(int(p.name) for p in (corrupt / "checkpoints").iterdir() if p.name.isdigit())
    for f in (corrupt / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    case("latest checkpoint damaged", corrupt, SMOKE, f"--workdir={corrupt}",
         "--config.checkpoint_every_steps=20")
    for step in (p for p in (corrupt / "checkpoints").iterdir() if p.name.isdigit()):
        for f in (step / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"garbage")
    case("every checkpoint damaged", corrupt, SMOKE, f"--workdir={corrupt}",
         "--config.checkpoint_every_steps=20")

    diverged = tmp / "diverged"
    for i in range(2):
        case(f"diverged run (lr 1e4){', rerun' if i else ''}", diverged, SMOKE,
             f"--workdir={diverged}", "--config.optim.lr=1e4")
    late = tmp / "late"
    case("run diverging after a checkpoint (lr 30)", late, SMOKE, f"--workdir={late}",
         "--config.optim.lr=30", "--config.log_every_steps=1", "--config.checkpoint_every_steps=7")

    def latency(proc):
        sent = re.search(r"t=([\d.]+)", proc.stderr)
        line = shown_line(proc)
        return f"{line} (exited {time.time() - float(sent.group(1)):.1f} s after the signal)" \
            if sent else line

    for point, spec in (("feature extraction", "extract_batch:20:0:TERM"), ("PCA", "pca:1:0:INT"),
                        ("k-means", "kmeans_iteration:3:0:TERM"),
                        ("training", "train_batch:10:0:TERM")):
        w = tmp / f"signal_{spec.split(':')[0]}"
        case(f"SIG{spec.rsplit(':', 1)[1]} during {point}", w, SMOKE, f"--workdir={w}",
             "--config.num_epochs=2", "--config.checkpoint_every_steps=7",
             extra_env={"DCJAX_FAULT": spec}, show=latency)
        case("  then the same command", w, SMOKE, f"--workdir={w}", "--config.num_epochs=2",
             "--config.checkpoint_every_steps=7")
    killed = tmp / "killed"
    for spec in ("train_batch:9:0:KILL", "checkpoint_save:1:0.05:KILL"):
        case(f"SIGKILL ({spec})", killed, SMOKE, f"--workdir={killed}", "--config.num_epochs=2",
             "--config.checkpoint_every_steps=7", extra_env={"DCJAX_FAULT": spec})
    case("  then the same command", killed, SMOKE, f"--workdir={killed}", "--config.num_epochs=2",
         "--config.checkpoint_every_steps=7")

    # Images: a folder with a 16-bit PNG, a rotated photo, a truncated and a non-image file.
    from PIL import Image

    folder = tmp / "photos" / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray((np.arange(400, dtype=np.uint32).reshape(20, 20) * 160).astype(np.uint16)
                    ).save(folder / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(folder / "phone.jpg", exif=exif)
    buf = io.BytesIO()
    Image.fromarray(np.ones((30, 30, 3), np.uint8)).save(buf, format="PNG")
    (folder / "cut.png").write_bytes(buf.getvalue()[:60])
    (folder / "notes.jpg").write_bytes(b"not an image")
    case("import: 16-bit PNG, EXIF-rotated JPEG, truncated PNG, non-image", tmp / "tfds" / "photos",
         f"--source={tmp / 'photos'}", "--name=photos", module="dcjax.data.prepare",
         show=lambda p: " / ".join(ln.strip() for ln in p.stdout.splitlines()
                                   if "skipped" in ln or ".png" in ln or ".jpg" in ln))

    table = markdown_table(["case", "exit", "what the user sees", "on disk"],
                           [[name, code, f"`{line}`", disk] for name, code, line, disk, _ in rows])
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
