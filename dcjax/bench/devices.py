r"""Epoch time against the number of (fake) devices on one host.

    python -m dcjax.bench.devices [--config=configs/digits.py] [--devices=1,2,4] [--epochs=3]

Runs the same config in one subprocess per device count (CPU: XLA's
--xla_force_host_platform_device_count; the batch is split over the devices, the state replicated)
and prints each phase's seconds per epoch, the median over the epochs after the first (which
compiles). On a CPU the fake devices share the same cores, so this measures what sharding costs
(collectives, smaller per-device matmuls), not a speed-up.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/digits.py", "Config file (':arg' allowed).")
flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts.")
flags.DEFINE_integer("epochs", 3, "Epochs per run (the first is left out of the medians).")

PHASES = ("time_extract", "time_pca", "time_kmeans", "time_train")


def main(argv):
    del argv
    root = Path(__file__).resolve().parents[2]
    print(f"config {FLAGS.config}, {FLAGS.epochs} epochs, median of epochs 1..{FLAGS.epochs - 1}")
    print("| devices | " + " | ".join(p.removeprefix("time_") + " s" for p in PHASES)
          + " | epoch s | vs 1 device |")
    print("|---" * (len(PHASES) + 3) + "|")
    base = None
    for n in FLAGS.devices:
        with tempfile.TemporaryDirectory() as workdir:
            env = dict(os.environ, JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
            subprocess.run([sys.executable, "-m", "dcjax.main", f"--config={FLAGS.config}",
                            f"--workdir={workdir}", f"--config.num_epochs={FLAGS.epochs}",
                            "--config.pixel_baseline=False"],
                           cwd=root, env=env, check=True, capture_output=True)
            records = [json.loads(line) for line in
                       (Path(workdir) / "metrics.jsonl").read_text().splitlines()][1:]
        med = {p: statistics.median(r[p] for r in records) for p in PHASES}
        total = sum(med.values())
        base = base or total
        print(f"| {n} | " + " | ".join(f"{med[p]:.2f}" for p in PHASES)
              + f" | {total:.2f} | {total / base:.2f}x |", flush=True)


if __name__ == "__main__":
    app.run(main)
