r"""k-means and PCA-whitening: dcjax (JAX) against faiss, scikit-learn and PyTorch on the same data
and init.

    python -m dcjax.bench.kmeans [--sizes=100000x256x1000x20,1000000x256x10000x1] [--json=PATH]
                                 [--backends=jax,auto,faiss,sklearn,torch] [--precisions=highest]
                                 [--torch_precisions=float32,tf32] [--pca=100000x4096x256]

Each (backend, size) runs in its own subprocess so its peak resident memory (`peak_rss_mb`) is its
own; all of them read the same synthetic clustered data (made once per size from a fixed seed) and
start from the same k initial centroids. `seconds` is the clustering call alone, after a warm-up call
that compiles (JAX) on the same shapes; `objective` is the backend's sum of squared distances at its
last assignment step (scikit-learn: its final inertia); `non-empty` counts the clusters of the final
assignment. Each JAX row after the first of its size says whether its final assignment, and its
assignment of every row to the shared initial centroids in one pass, equal the first JAX row's
(`--precisions=highest,exact_fast`: whether exact_fast gives highest's assignment; on a GPU only the
one-pass column can say so, since there the 20-iteration runs of one precision already differ).
The speed column is each time relative to faiss, or, where faiss did not run that size, to the
PyTorch row.

`torch` is the reference on a GPU where no faiss GPU build can be installed: Lloyd iterations as
faiss' flat GPU index computes them (a `||c||^2 - 2 x.c` matmul on the device, argmin per row,
chunked rows), faiss' empty-cluster split, the same initial centroids; `float32` with TF32 off,
`tf32` with it on. It runs on the GPU when PyTorch sees one, else on the CPU.

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
flags.DEFINE_string("backends", "jax,auto,faiss,sklearn", "Which backends to run (also: torch).")
flags.DEFINE_list("precisions", ["highest"], "The jax backend's clustering.precision values.")
flags.DEFINE_list("torch_precisions", ["float32"], "The torch backend's matmul: float32 (TF32 "
                  "off), tf32.")
flags.DEFINE_integer("timeout", 0, "Seconds each measurement (subprocess) may take (0: no limit); "
                     "a measurement past it is a 'failed: timeout' row.")
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


def kmeans_torch(x: np.ndarray, init: np.ndarray, iterations: int, precision: str = "float32",
                 chunk: int = 32768, seed: int = INIT_SEED) -> tuple[np.ndarray, list[float]]:
    """Lloyd iterations in PyTorch, as faiss' flat GPU index computes them: scores
    `||c||^2 - 2 x.c` by a matmul on the device, `chunk` rows at a time, argmin per row; the means;
    then faiss' split of each empty cluster (a donor drawn with probability proportional to its
    size - 1, its centroid copied and both scaled by 1 +- 1/1024 in alternating coordinates, its
    count halved). Returns the last assignment and each iteration's objective (sum of squared
    distances of that iteration's assignment). `precision`: 'float32' (TF32 off) or 'tf32'."""
    import torch

    from dcjax.clustering.kmeans import SPLIT_EPS

    if precision not in ("float32", "tf32"):
        raise ValueError(f"torch precision {precision!r} must be float32 or tf32")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev)
    c = torch.from_numpy(np.ascontiguousarray(init, np.float32)).to(dev)
    (n, d), k = xt.shape, c.shape[0]
    sign = torch.where(torch.arange(d, device=dev) % 2 == 0, 1.0, -1.0)
    x_sq = (xt * xt).sum(1)
    assign = torch.empty(n, dtype=torch.long, device=dev)
    objectives = []
    for _ in range(iterations):
        c_sq = (c * c).sum(1)
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for start in range(0, n, chunk):
            scores = torch.addmm(c_sq[None, :], xt[start:start + chunk], c.T, alpha=-2.0)
            best, idx = scores.min(1)
            assign[start:start + chunk] = idx
            total += (best + x_sq[start:start + chunk]).clamp_min(0).sum(dtype=torch.float64)
        objectives.append(total)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        c = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None].to(c.dtype), c)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            host = counts.cpu()
            for ci in empty:
                cj = int(torch.multinomial((host - 1).clamp_min(0).double(), 1, generator=gen))
                donor = c[cj].clone()
                c[ci], c[cj] = donor * (1 + sign * SPLIT_EPS), donor * (1 - sign * SPLIT_EPS)
                host[ci] = host[cj] // 2
                host[cj] -= host[ci]
    return assign.cpu().numpy().astype(np.int32), [float(o) for o in objectives]



def torch_device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_child(spec: dict) -> dict:
    kind, backend = spec["kind"], spec["backend"]
    n, d = spec["n"], spec["d"]
    x = np.load(spec["data"]) if spec.get("data") else make_data(n, d)
    row = dict(kind=kind, backend=backend, n=n, d=d)
    assignment = None
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
            assignment = result.assignment
            if spec.get("save_one_pass"):
                # One assignment pass to the shared initial centroids: precisions compared on the
                # same centroids (the 20-iteration results drift apart on GPUs, whose scatter-add
                # sums the means in a varying order).
                from dcjax.clustering.kmeans import assign

                np.save(spec["save_one_pass"], assign(x, init, precision=precision)[0])
        elif backend == "torch":
            precision = spec.get("precision", "float32")
            kmeans_torch(x, init, 1, precision)  # cuBLAS' start-up and the device's first copy
            t = time.perf_counter()
            assignment, objectives = kmeans_torch(x, init, iters, precision)
            seconds, objective = time.perf_counter() - t, objectives[-1]
            row.update(precision=precision, backend=f"torch ({torch_device()})")
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
            assignment = result.assignment
        else:
            from sklearn.cluster import KMeans

            t = time.perf_counter()
            km = KMeans(k, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
            seconds, objective = time.perf_counter() - t, float(km.inertia_)
            assignment = km.labels_
        row.update(seconds=seconds, objective=objective)
        if assignment is not None:
            assignment = np.asarray(assignment)
            row["nonempty"] = int(len(np.unique(assignment[assignment >= 0])))
            if spec.get("save"):
                np.save(spec["save"], assignment.astype(np.int32))
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
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(),
                             timeout=FLAGS.timeout or None)
    except subprocess.TimeoutExpired:
        return dict(spec, seconds=None, objective=None, peak_rss_mb=None, blas="-",
                    error=f"timeout ({FLAGS.timeout} s)")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return dict(spec, seconds=None, objective=None, peak_rss_mb=None, blas="-", error=tail)
    return {**spec, **json.loads(lines[-1])}


def same_assignment(row: dict, first: dict | None, key: str = "save") -> str:
    """'yes', 'N differ' or '-': the row's final assignment (key 'save'; 'save_one_pass': one pass
    to the initial centroids) against the first JAX row's."""
    if first is None or first is row or not row.get(key) or not first.get(key):
        return "-"
    if not (os.path.exists(row[key]) and os.path.exists(first[key])):
        return "-"
    a, b = np.load(row[key]), np.load(first[key])
    differ = int(np.sum(a != b))
    return "yes" if differ == 0 else f"{differ:,} differ"


def print_table(rows: list[dict]) -> None:
    print("\n| task | N | d | k / dim | iters | backend | precision | seconds | speed vs ref | "
          "objective | obj / ref | non-empty | rescored | final = first jax | 1 pass = first jax | "
          "peak RSS MB | BLAS |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for row in rows:
        same = [r for r in rows if r["kind"] == row["kind"] and r["n"] == row["n"]
                and r.get("k") == row.get("k") and r.get("iters") == row.get("iters")]
        ref = (next((r for r in same if r["backend"] == "faiss"), None)
               or next((r for r in same if r["backend"].startswith("torch")), None))
        first_jax = next((r for r in same if r["backend"] == "jax"), None)
        speed = obj = "-"
        if ref and ref.get("seconds") and row.get("seconds"):
            speed = f"{ref['seconds'] / row['seconds']:.2f}x"
        if ref and ref.get("objective") and row.get("objective"):
            obj = f"{row['objective'] / ref['objective']:.4f}"
        secs = f"{row['seconds']:.2f}" if row.get("seconds") else f"failed: {row.get('error')}"
        objective = f"{row['objective']:.6g}" if row.get("objective") else "-"
        rss = f"{row['peak_rss_mb']:,.0f}" if row.get("peak_rss_mb") else "-"
        rescored = f"{row['rescored']:.2%}" if row.get("rescored") is not None else "-"
        nonempty = f"{row['nonempty']:,}" if row.get("nonempty") is not None else "-"
        print(f"| {row['kind']} | {row['n']:,} | {row['d']} | {row.get('k', '-')} | "
              f"{row.get('iters', '-')} | {row['backend']} | {row.get('precision') or '-'} | "
              f"{secs} | {speed} | {objective} | {obj} | {nonempty} | {rescored} | "
              f"{same_assignment(row, first_jax) if row['backend'] == 'jax' else '-'} | "
              f"{same_assignment(row, first_jax, 'save_one_pass') if row['backend'] == 'jax' else '-'}"
              f" | {rss} | "
              f"{row.get('blas', '-')} |", flush=True)


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(run_child(json.loads(FLAGS.child))))
        return
    import tempfile

    import jax

    dev = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.device_count()} x {dev.platform} ({dev.device_kind})",
          flush=True)
    rows = []
    backends = [b for b in FLAGS.backends.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="dcjax-bench-kmeans-") as scratch:
        for size in [s for s in FLAGS.sizes.split(",") if s]:
            n, d, k, iters = (int(v) for v in size.split("x"))
            data = os.path.join(scratch, f"x-{n}x{d}.npy")
            if not os.path.exists(data):
                np.save(data, make_data(n, d))  # once per shape: every child reads these rows
            for backend in backends:
                if backend == "sklearn" and n > FLAGS.sklearn_max_n:
                    continue
                if backend == "faiss" and 0 < FLAGS.faiss_max_iters < iters:
                    continue
                precisions = {"jax": FLAGS.precisions, "torch": FLAGS.torch_precisions}
                for precision in precisions.get(backend, [None]):
                    spec = dict(kind="kmeans", backend=backend, n=n, d=d, k=k, iters=iters,
                                data=data, save=os.path.join(scratch, f"a{len(rows)}.npy"),
                                save_one_pass=os.path.join(scratch, f"p{len(rows)}.npy"))
                    if precision is not None:
                        spec["precision"] = precision
                    rows.append(measure(spec))
                    row = rows[-1]
                    print(f"{backend} {precision or ''} {size}: "
                          + (f"{row['seconds']:.2f} s" if row.get("seconds") else
                             f"failed: {row.get('error')}"), flush=True)
        if FLAGS.pca:
            n, d, dim = (int(v) for v in FLAGS.pca.split("x"))
            for backend in [b for b in backends if b in ("jax", "faiss")]:
                rows.append(measure(dict(kind="pca", backend=backend, n=n, d=d, dim=dim)))
        print_table(rows)
        for row in rows:  # the scratch folder goes with the assignments
            first = next((r for r in rows if r["backend"] == "jax" and r["n"] == row["n"]
                          and r.get("k") == row.get("k") and r.get("iters") == row.get("iters")
                          and r["kind"] == row["kind"]), None)
            if row["backend"] == "jax":
                row["same_as_first_jax"] = same_assignment(row, first)
                row["one_pass_same_as_first_jax"] = same_assignment(row, first, "save_one_pass")
    for row in rows:
        for key in ("data", "save", "save_one_pass"):
            row.pop(key, None)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
