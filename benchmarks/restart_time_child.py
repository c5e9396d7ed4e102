"""The child process of benchmarks/restart_time.py: `python -m drope_jax.train` with its
parts timed, printing them as one JSON line once the first step is done.

  python -m benchmarks.restart_time_child --workdir=DIR --config=... (train's flags)

The parts: imports (jax, flax, orbax, grain, ...); the trainer methods below, timed by
wrapping them; the first step (from the restore's end: building the step function,
tracing, lowering, compiling or loading, running); and, overlapping those, JAX's
tracing, lowering and compiling-or-loading as its monitoring events report them.
"""

import time

STARTED = time.time()

# pylint: disable=wrong-import-position
import json
import sys

from jax import monitoring

from drope_jax import cli
from drope_jax import compilation_cache
from drope_jax import train
from drope_jax import trainer

MARK = "restart_time parts: "
JAX_EVENTS = {  # JAX's monitoring event -> the part it times.
    "/jax/core/compile/jaxpr_trace_duration": "jax: tracing",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "jax: lowering",
    "/jax/core/compile/backend_compile_duration": "jax: compiling or loading",
}
# Trainer methods timed, in the order they run before the first step, and their part.
TRAINER_PARTS = {"__init__": "trainer setup", "_data_iter": "data pipeline",
                 "_restore_or_init": "checkpoint restore"}
PARTS = ("imports", *TRAINER_PARTS.values(), "first step", *JAX_EVENTS.values())

_parts = dict.fromkeys(PARTS, 0.0)
_parts["imports"] = time.time() - STARTED
_restored_at = []


def _on_duration(event: str, duration: float, **kwargs):
  del kwargs
  if event in JAX_EVENTS:
    _parts[JAX_EVENTS[event]] += duration


def _timed(method, part: str):
  def wrapper(*args, **kwargs):
    start = time.time()
    result = method(*args, **kwargs)
    _parts[part] += time.time() - start
    if part == "checkpoint restore":
      _restored_at.append(time.time())
    return result
  return wrapper


def _with_parts(report_first_step):
  def wrapper(self, step_metrics):
    report_first_step(self, step_metrics)
    _parts["first step"] = time.time() - _restored_at[0]
    hits, misses = (int(s.split()[0]) for s in
                    compilation_cache.summary().split(": ")[-1].split(", "))
    # CPU seconds of all threads: less at the mercy of other jobs than wall time.
    print(MARK + json.dumps(dict(_parts, hits=hits, misses=misses,
                                 cpu=time.process_time())), flush=True)
  return wrapper


def main():
  monitoring.register_event_duration_secs_listener(_on_duration)
  for name, part in TRAINER_PARTS.items():
    setattr(trainer.Trainer, name, _timed(getattr(trainer.Trainer, name), part))
  # pylint: disable=protected-access
  trainer.Trainer._report_first_step = _with_parts(trainer.Trainer._report_first_step)
  sys.argv[0] = "drope_jax.train"
  cli.run(train.main, config_flag="config")


if __name__ == "__main__":
  main()
