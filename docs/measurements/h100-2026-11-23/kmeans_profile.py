# ruff: noqa
"""The script behind kmeans_profile.txt, exactly as run on the H100 (2026-11-23), from the repo root:
`PYTHONPATH=. python3 kmeans_profile.py`. Its "lloyd iter" column is a difference of two whole
kmeans() wall times (Python, host copies included) and is noisy; `python -m dcjax.bench.kmeans_parts`
is the maintained form of this measurement."""
import time, functools
import jax, jax.numpy as jnp
from jax import lax
from dcjax.clustering.kmeans import kmeans, assign, PRECISIONS
n, d, k = 1281167 // 8192 * 8192, 256, 10000
y = jax.random.normal(jax.random.key(0), (n, d))
c = y[:k] + 0.0
def t(f, *a):
    jax.block_until_ready(f(*a)); s = time.perf_counter(); jax.block_until_ready(f(*a)); return time.perf_counter() - s
for prec in ["highest", "bf16_3x", "tf32_3x"]:
    alg = PRECISIONS[prec]
    for chunk in [8192, 32768]:
        @jax.jit
        def mm_min(x, c):
            def one(xc):
                s = jnp.dot(xc, c.T, precision=alg, preferred_element_type=jnp.float32)
                return jnp.sum(s[:, :8])
            return lax.map(one, x.reshape(-1, chunk, d))
        @jax.jit
        def mm_arg(x, c):
            csq = jnp.sum(c * c, 1)
            def one(xc):
                s = csq[None] - 2 * jnp.dot(xc, c.T, precision=alg, preferred_element_type=jnp.float32)
                return jnp.argmin(s, 1), jnp.min(s, 1)
            return lax.map(one, x.reshape(-1, chunk, d))
        a = t(mm_min, y, c); b = t(mm_arg, y, c)
        e = t(lambda: assign(y, c, chunk_size=chunk, precision=prec))
        s = time.perf_counter(); kmeans(y, k, iterations=1, chunk_size=chunk, precision=prec)
        s1 = time.perf_counter() - s
        s = time.perf_counter(); kmeans(y, k, iterations=6, chunk_size=chunk, precision=prec); s6 = time.perf_counter() - s
        print(f"{prec:8s} chunk {chunk:6d}: matmul only {a*1e3:7.1f} ms | matmul+argmin {b*1e3:7.1f} ms | assign() {e*1e3:7.1f} ms | lloyd iter {(s6-s1)/5*1e3:7.1f} ms", flush=True)
