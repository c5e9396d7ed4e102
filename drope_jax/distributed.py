"""Multi-process start-up: one `jax.distributed.initialize` before anything touches devices.

- TPU VM pods and SLURM: JAX discovers the coordinator itself (`DROPE_DISTRIBUTED=auto`,
  set by the launch scripts; on a multi-worker TPU VM it is detected automatically).
- Anything else (CPU or GPU hosts, tests on 127.0.0.1): set DROPE_COORDINATOR=host:port,
  DROPE_NUM_PROCESSES and DROPE_PROCESS_ID on every process.

No process may wait forever for a dead peer. A process that crashes exits at once
instead of waiting at the shutdown barrier, so its peers see it gone (a closed
connection, or no heartbeat for DROPE_HEARTBEAT_TIMEOUT seconds) and abort too. An error
the CLI reports (a bad config, a missing file, a non-finite loss) exits with status 2,
also without the shutdown barrier, once the trainer has closed its checkpoints
(`exit_reporting`).
"""

import os
import sys
import time
import traceback

import jax
from jax._src import distributed as jax_distributed  # the coordination client's barrier.

_TIMEOUTS = {  # jax.distributed.initialize keyword: (environment variable, seconds).
    "initialization_timeout": ("DROPE_INIT_TIMEOUT", 300),
    "heartbeat_timeout_seconds": ("DROPE_HEARTBEAT_TIMEOUT", 100),
    "shutdown_timeout_seconds": ("DROPE_SHUTDOWN_TIMEOUT", 120),
}


def _tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def _timeouts() -> dict[str, int]:
  return {arg: int(os.environ.get(env, default))
          for arg, (env, default) in _TIMEOUTS.items()}


def initialize() -> None:
  """Joins the job described by the environment; a no-op for a single process."""
  coordinator = os.environ.get("DROPE_COORDINATOR")
  if coordinator:
    # CPU processes exchange collectives over gloo (other backends ignore this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["DROPE_NUM_PROCESSES"]),
        process_id=int(os.environ["DROPE_PROCESS_ID"]), **_timeouts())
  elif os.environ.get("DROPE_DISTRIBUTED") == "auto" or _tpu_pod():
    jax.distributed.initialize(**_timeouts())
  else:
    return
  sys.excepthook = _exit_on_crash


# How long a process reporting an error waits for its peers to report theirs.
EXIT_GRACE_SECONDS = 20


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def exit_reporting(code: int):
  """Exits with `code` after an error was reported, without jax's shutdown barrier.

  An error every process meets (a config they all read) should end every process the
  same way. Process 0 hosts the coordination service, and a peer still running when it
  vanishes aborts with a fatal error instead of reporting its own. So the processes
  first meet at a barrier of EXIT_GRACE_SECONDS (one that never comes, say after an
  error of this host alone, is not waited for longer), and process 0 leaves last.
  """
  if is_multiprocess():
    try:
      jax_distributed.global_state.client.wait_at_barrier(
          "drope_exit_reporting", EXIT_GRACE_SECONDS * 1000)
      if jax.process_index() == 0:
        time.sleep(1)  # the others' exits come first.
    except Exception:  # pylint: disable=broad-except
      pass  # a peer did not come: leave anyway.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _exit_on_crash(exc_type, exc, tb):
  """Prints the traceback and exits without the shutdown barrier: peers blocked in a
  collective would never reach it, and the barrier would hold this process too."""
  traceback.print_exception(exc_type, exc, tb)
  print(f"process {jax.process_index()} failed; exiting without waiting for the other "
        f"{jax.process_count() - 1} processes", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)
