"""Multi-process start-up on JAX's own distributed runtime (no home-made coordination).

`jax.distributed.initialize()` runs before anything touches a device when the job is several
processes: a multi-task SLURM step or a multi-worker Cloud TPU VM (both detected by JAX itself), or
an explicit coordinator address / process count / process id (flags, or the environment variables
DCJAX_COORDINATOR_ADDRESS, DCJAX_NUM_PROCESSES, DCJAX_PROCESS_ID for launchers that set variables).
"""

from __future__ import annotations

import os

from absl import flags


def define_flags() -> None:
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process "
                        "run launched by hand; SLURM and Cloud TPU are detected without it.")
    flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run (with "
                         "--coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def explicit_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None) -> dict | None:
    """The explicit coordinator settings from the arguments, else the DCJAX_* variables, or None."""
    env = os.environ
    address = coordinator_address or env.get("DCJAX_COORDINATOR_ADDRESS")
    if not address:
        return None
    count = num_processes if num_processes is not None else env.get("DCJAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env.get("DCJAX_PROCESS_ID")
    if count is None or index is None:
        raise ValueError("a coordinator address needs the number of processes and this process's "
                         "id too (--num_processes / --process_id or DCJAX_NUM_PROCESSES / "
                         "DCJAX_PROCESS_ID)")
    return {"coordinator_address": address, "num_processes": int(count), "process_id": int(index)}


def launched_as_several_processes(settings: dict | None) -> bool:
    """True under a multi-task SLURM step, a multi-worker Cloud TPU VM, or explicit settings."""
    if settings is not None:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """jax.distributed.initialize() when several processes run; returns whether it did."""
    settings = explicit_settings(coordinator_address, num_processes, process_id)
    if not launched_as_several_processes(settings):
        return False
    import jax

    # On the CPU backend (tests, laptops) cross-process collectives use gloo, jax's default
    # `jax_cpu_collectives_implementation`.
    if settings is not None:
        jax.distributed.initialize(**settings)
    else:
        jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)
    return True

