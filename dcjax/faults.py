"""Fault injection for the reliability tests (tests/test_reliability.py, docs/reliability.md).

`point(name)` marks a place in the loop: 'extract_batch', 'pca', 'kmeans_iteration',
'train_batch', 'checkpoint_save' (just before a checkpoint is written). It does nothing unless the
environment variable DCJAX_FAULT=NAME:COUNT[:DELAY[:SIGNAL]] is set, in which case the COUNT-th
time this process reaches NAME it sends itself SIGNAL (default KILL) after DELAY seconds (default
0; a delay lands the signal inside whatever follows, e.g. the middle of a checkpoint write).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

POINTS = ("extract_batch", "pca", "kmeans_iteration", "train_batch", "checkpoint_save")


def _parse(spec: str | None):
    if not spec:
        return None
    parts = spec.split(":")
    if parts[0] not in POINTS or len(parts) < 2:
        raise ValueError(f"DCJAX_FAULT={spec!r}: expected NAME:COUNT[:DELAY[:SIGNAL]] with NAME "
                         f"in {POINTS}")
    delay = float(parts[2]) if len(parts) > 2 and parts[2] else 0.0
    signum = getattr(signal, "SIG" + parts[3].upper()) if len(parts) > 3 else signal.SIGKILL
    return parts[0], int(parts[1]), delay, signum


_SPEC = _parse(os.environ.get("DCJAX_FAULT"))
_counts: dict[str, int] = {}


def point(name: str) -> None:
    if _SPEC is None or name != _SPEC[0]:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != _SPEC[1]:
        return
    _, _, delay, signum = _SPEC
    print(f"dcjax fault injection: {signal.Signals(signum).name} at {name} #{_counts[name]}, "
          f"t={time.time() + delay:.3f}", file=sys.stderr, flush=True)
    if delay <= 0:
        os.kill(os.getpid(), signum)
    else:
        threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
