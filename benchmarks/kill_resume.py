r"""Kill a training run with SIGKILL at random moments, resume it each time, and compare
it with an uninterrupted run of the same command.

  python -m benchmarks.kill_resume --kills=5 [--seed=0] [--workdir=/tmp/drope_kill_resume] \
      -- --config=configs/tiny.py --config.train.steps=60 --config.drope.drop_at_step=40 \
         --config.checkpoint.every_steps=10

Everything after `--` goes to `python -m drope_jax.train`. Prints, per kill, when it
struck, the last step the killed run logged and the checkpoint the next run resumed
from; then whether the final parameters and optimizer state are bitwise equal to the
uninterrupted run's and whether the loss curves (the last line per step) agree.
"""

import json
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags

_KILLS = flags.DEFINE_integer("kills", 5, "SIGKILLs before the run may finish.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/drope_kill_resume",
                               "Holds reference/ and killed/ (emptied first).")


def _train(workdir: pathlib.Path, train_args: list[str], log: pathlib.Path):
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *train_args]
  return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _curve(workdir: pathlib.Path) -> dict[int, tuple]:
  """step -> (phase, loss, tokens_seen) of the last line logged for that step."""
  lines = (json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines())
  return {m["step"]: (m["phase"], m["loss"], m["tokens_seen"]) for m in lines}


def _last_logged_step(log: pathlib.Path) -> int | None:
  steps = re.findall(r"^step\s+(\d+)/", log.read_text(), flags=re.M)
  return int(steps[-1]) if steps else None


def _final_state(workdir: pathlib.Path):
  checkpoints = workdir / "checkpoints"
  step = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    return step, checkpointer.restore(checkpoints / str(step) / "state")


def _bitwise_equal(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def main(argv):
  train_args = argv[1:]
  root = pathlib.Path(_WORKDIR.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  reference, killed = root / "reference", root / "killed"

  start = time.perf_counter()
  if _train(reference, train_args, root / "reference.log").wait():
    sys.exit(f"the uninterrupted run failed: see {root / 'reference.log'}")
  duration = time.perf_counter() - start
  print(f"uninterrupted run: {duration:.0f} s")

  rng = random.Random(_SEED.value)
  print("| kill | after s | last step logged | next run resumed from |")
  print("|---:|---:|---:|---:|")
  kill, proc, log = 0, None, None
  while True:
    kill += 1
    log = root / f"killed_{kill}.log"
    proc = _train(killed, train_args, log)
    if kill > 1:
      resumed = re.search(r"resumed from \S+/(\d+) ", _wait_for_start(log, proc))
      print(f"{resumed.group(1) if resumed else 'nothing'} |")
    if kill > _KILLS.value:
      break
    delay = rng.uniform(0.15, 0.5) * duration
    try:
      proc.wait(timeout=delay)
      print(f"run {kill} finished before its kill at {delay:.0f} s")
      break
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    print(f"| {kill} | {delay:.0f} | {_last_logged_step(log)} | ", end="", flush=True)
  if proc.wait():
    sys.exit(f"the last run failed: see {log}")

  step_a, state_a = _final_state(reference)
  step_b, state_b = _final_state(killed)
  print(f"final checkpoint: step {step_a} vs {step_b}; parameters and optimizer state "
        f"bitwise equal: {step_a == step_b and _bitwise_equal(state_a, state_b)}")
  curve_a, curve_b = _curve(reference), _curve(killed)
  print(f"loss curve (phase, loss, tokens seen) equal at all {len(curve_a)} logged steps: "
        f"{curve_a == curve_b}")


def _wait_for_start(log: pathlib.Path, proc, timeout: float = 300) -> str:
  """The run's output once it has resumed or started its first step."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    text = log.read_text()
    if "resumed from" in text or re.search(r"^step\s+\d+/", text, flags=re.M):
      return text
    time.sleep(0.2)
  return log.read_text()


if __name__ == "__main__":
  app.run(main)
