r"""k-means and PCA-whitening: dcjax (JAX) against faiss and scikit-learn on the same data and init.

    python -m dcjax.bench.kmeans [--sizes=100000x256x1000x20,1000000x256x10000x1] [--json=PATH]
                                 [--backends=jax,auto,faiss,sklearn] [--precisions=highest]
                                 [--pca=100000x4096x256]

Each (backend, size) runs in its own subprocess so its peak resident memory (`peak_rss_mb`) is its
own; all of them build the same synthetic clustered data from the same seed and start from the same
k initial centroids. `seconds` is the clustering call alone, after a warm-up call that compiles (JAX)
on the same shapes; `objective` is the backend's sum of squared distances at its last assignment
step (scikit-learn: its final inertia). The table's last column is each time relative to faiss.

The BLAS kernel matters to faiss and scikit-learn: by default the children run with
OPENBLAS_CORETYPE set to the best kernel this processor supports (SkylakeX with AVX-512, else
Haswell with AVX2), and the table names the kernel each used. `--blas_coretype=inherit` keeps the
environment as it is.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("sizes", "100000x256x1000x20,1000000x256x10000x1",
                    "Comma-separated NxDxKxITERS problems.")
flags.DEFINE_string("backends", "jax,auto,faiss,sklearn", "Which backends to run.")
flags.DEFINE_list("precisions", ["highest"], "The jax backend's clustering.precision values.")
flags.DEFINE_string("pca", "100000x4096x256", "NxDxDIM PCA-whitening problem ('' to skip).")
flags.DEFINE_string("json", "", "Write the rows as a JSON list here.")
flags.DEFINE_string("blas_coretype", "best", "'best', 'inherit', or an OPENBLAS_CORETYPE value.")
flags.DEFINE_integer("sklearn_max_n", 200_000, "Skip scikit-learn above this N (it is slow).")
flags.DEFINE_integer("faiss_max_iters", 0, "Skip faiss for sizes of more iterations than this "
                     "(0: never skip), e.g. to time an accelerator's long run beside a short one.")
flags.DEFINE_string("child", "", "Internal: run one measurement and print its JSON row.")


def make_data(n: int, d: int, seed: int = 0, centers: int = 2000) -> np.ndarray:
    """[n, d] float32: points around `centers` random centres, generated in chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d), dtype=np.float32) * 2.0
    x = np.empty((n, d), np.float32)
    rows = max(1, (1 << 22) // d)  # 16 MB temporaries; the same values as one block of 65,536
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        label = rng.integers(0, centers, stop - start)
        for i in range(start, stop, rows):
            j = min(stop, i + rows)
            x[i:j] = c[label[i - start:j - start]]
            x[i:j] += rng.standard_normal((j - i, d), dtype=np.float32)
    return x


INIT_SEED = 1


def initial_centroids(x: np.ndarray, k: int) -> np.ndarray:
    """k rows of x: the rows `dcjax.clustering.kmeans.init_centroids(x, k, INIT_SEED)` picks."""
    idx = np.sort(np.random.default_rng(INIT_SEED).choice(len(x), size=k, replace=False))
    return x[idx].copy()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info

        kinds = {i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"}
        return "/".join(sorted(k for k in kinds if k)) or "-"
    except ImportError:
        return "?"


def run_child(spec: dict) -> dict:
    kind, backend = spec["kind"], spec["backend"]
    n, d = spec["n"], spec["d"]
    x = make_data(n, d)
    row = dict(kind=kind, backend=backend, n=n, d=d)
    if kind == "kmeans":
        k, iters = spec["k"], spec["iters"]
        init = initial_centroids(x, k)
        row.update(k=k, iters=iters)
        if backend == "jax":
            from dcjax.clustering.kmeans import kmeans

            precision = spec.get("precision", "highest")
            # compile on these shapes
            kmeans(x, k, iterations=1, initial_centroids=init, precision=precision)
            t = time.perf_counter()
            result = kmeans(x, k, iterations=iters, initial_centroids=init, precision=precision)
            seconds, objective = time.perf_counter() - t, float(result.objective[-1])
            row.update(precision=precision, rescored=result.rescored_share)
        elif backend == "auto":
            from dcjax.clustering import choose_backend, run_kmeans

            chosen = choose_backend(n, d)[0]
            if chosen == "jax":
                run_kmeans(x, k, iterations=1, seed=INIT_SEED)  # compile on these shapes
            t = time.perf_counter()
            # The same initial rows as `init` (run_kmeans starts from init_centroids(x, k, seed)).
            result = run_kmeans(x, k, backend="auto", iterations=iters, seed=INIT_SEED)
            seconds, objective = time.perf_counter() - t, float(result.objective[-1])
            row.update(backend=f"auto ({chosen})")
        elif backend == "faiss":
            from dcjax.clustering.faiss_backend import kmeans_faiss

            t = time.perf_counter()
            result = kmeans_faiss(x, k, iterations=iters, initial_centroids=init)
            seconds, objective = time.perf_counter() - t, float(result.objective[-1])
        else:
            from sklearn.cluster import KMeans

            t = time.perf_counter()
            km = KMeans(k, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
            seconds, objective = time.perf_counter() - t, float(km.inertia_)
        row.update(seconds=seconds, objective=objective)
    else:
        dim = spec["dim"]
        row.update(k=dim, iters=0)
        if backend == "jax":
            import jax

            from dcjax.clustering.pca import pca_whiten

            jax.block_until_ready(pca_whiten(x[:4096], dim)[0])  # compile the apply
            # Compile the fit on these shapes, and finish before the timed call puts x again.
            jax.block_until_ready(pca_whiten(x, dim)[0])
            t = time.perf_counter()
            y, _ = pca_whiten(x, dim)
            jax.block_until_ready(y)
            seconds = time.perf_counter() - t
        else:
            import faiss

            t = time.perf_counter()
            pca = faiss.PCAMatrix(d, dim, -0.5)
            pca.train(x)
            y = pca.apply(x)
            faiss.normalize_L2(y)
            seconds = time.perf_counter() - t
        row.update(seconds=seconds, objective=None)
    row.update(peak_rss_mb=peak_rss_mb(), blas=blas_kernel())
    return row


def child_env() -> dict:
    env = dict(os.environ)
    choice = FLAGS.blas_coretype
    if choice == "inherit":
        return env
    if choice == "best":
        flags_ = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        choice = "SkylakeX" if "avx512f" in flags_ else "Haswell"
    env["OPENBLAS_CORETYPE"] = choice
    env.pop("OPENBLAS_L2_SIZE", None)
    return env


def measure(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "dcjax.bench.kmeans", f"--child={json.dumps(spec)}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return dict(spec, seconds=None, objective=None, peak_rss_mb=None, blas="-", error=tail)
    return json.loads(lines[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(run_child(json.loads(FLAGS.child))))
        return
    import jax

    dev = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.device_count()} x {dev.platform} ({dev.device_kind})")
    rows = []
    backends = [b for b in FLAGS.backends.split(",") if b]
    for size in [s for s in FLAGS.sizes.split(",") if s]:
        n, d, k, iters = (int(v) for v in size.split("x"))
        for backend in backends:
            if backend == "sklearn" and n > FLAGS.sklearn_max_n:
                continue
            if backend == "faiss" and 0 < FLAGS.faiss_max_iters < iters:
                continue
            for precision in FLAGS.precisions if backend == "jax" else [None]:
                spec = dict(kind="kmeans", backend=backend, n=n, d=d, k=k, iters=iters)
                rows.append(measure(spec if precision is None else dict(spec, precision=precision)))
    if FLAGS.pca:
        n, d, dim = (int(v) for v in FLAGS.pca.split("x"))
        for backend in [b for b in backends if b in ("jax", "faiss")]:
            rows.append(measure(dict(kind="pca", backend=backend, n=n, d=d, dim=dim)))

    print("\n| task | N | d | k / dim | iters | backend | precision | seconds | vs faiss | objective "
          "| obj / faiss | rescored | peak RSS MB | BLAS |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r for r in rows if r["backend"] == "faiss" and r["kind"] == row["kind"]
                    and r["n"] == row["n"] and r.get("k") == row.get("k")
                    and r.get("iters") == row.get("iters")), None)
        speed = obj = "-"
        if ref and ref.get("seconds") and row.get("seconds"):
            speed = f"{ref['seconds'] / row['seconds']:.2f}x"
        if ref and ref.get("objective") and row.get("objective"):
            obj = f"{row['objective'] / ref['objective']:.4f}"
        secs = f"{row['seconds']:.2f}" if row.get("seconds") else f"failed: {row.get('error')}"
        objective = f"{row['objective']:.6g}" if row.get("objective") else "-"
        rss = f"{row['peak_rss_mb']:,.0f}" if row.get("peak_rss_mb") else "-"
        rescored = f"{row['rescored']:.2%}" if row.get("rescored") is not None else "-"
        print(f"| {row['kind']} | {row['n']:,} | {row['d']} | {row.get('k', '-')} | "
              f"{row.get('iters', '-')} | {row['backend']} | {row.get('precision') or '-'} | "
              f"{secs} | {speed} | {objective} | {obj} | {rescored} | {rss} | "
              f"{row.get('blas', '-')} |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
