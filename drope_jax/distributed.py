"""Multi-process start-up: one `jax.distributed.initialize` before anything touches devices.

- TPU VM pods and SLURM: JAX discovers the coordinator itself (`DROPE_DISTRIBUTED=auto`,
  set by the launch scripts; on a multi-worker TPU VM it is detected automatically).
- Anything else (CPU or GPU hosts, tests on 127.0.0.1): set DROPE_COORDINATOR=host:port,
  DROPE_NUM_PROCESSES and DROPE_PROCESS_ID on every process.
"""

import os

import jax


def _tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize() -> None:
  coordinator = os.environ.get("DROPE_COORDINATOR")
  if coordinator:
    if jax.config.jax_platforms in (None, "", "cpu") and os.environ.get(
        "JAX_PLATFORMS", "cpu") == "cpu":
      # CPU processes exchange collectives over gloo.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["DROPE_NUM_PROCESSES"]),
        process_id=int(os.environ["DROPE_PROCESS_ID"]))
  elif os.environ.get("DROPE_DISTRIBUTED") == "auto" or _tpu_pod():
    jax.distributed.initialize()
