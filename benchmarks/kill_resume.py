r"""Kill a training run with SIGKILL at the moments that matter, resume it each time, and
compare it with an uninterrupted run of the same command.

  python -m benchmarks.kill_resume --kills=10 [--moments=save,eval,drop,random] \
      [--seed=0] [--workdir=/tmp/drope_kill_resume] \
      -- --config=configs/tiny.py --config.train.steps=60 --config.drope.drop_at_step=40 \
         --config.checkpoint.every_steps=10 --config.train.eval_every=20

Everything after `--` goes to `python -m drope_jax.train` (with `--verbosity=0` added:
the trainer says at INFO when it starts an evaluation). The kills take `--moments` in
turn:
  save    inside an asynchronous checkpoint save: a step directory is still orbax's
          temporary `<step>.orbax-checkpoint-tmp`, not yet finalized;
  eval    during an in-run evaluation (train.eval_every), before its eval_loss is logged;
  drop    at the drop step, as the run enters the recalibration phase (the drop-point
          checkpoint may still be saving); once a run has resumed past it, `random`;
  random  10-80% of the way through the steps left, after the run has (re)started
          (timed by the uninterrupted run's seconds per step).
Prints, per kill, the moment aimed at and what the kill struck, the last step the
killed run logged and the checkpoint the next run resumed from; then whether the final
parameters and optimizer state are bitwise equal to the uninterrupted run's, whether
the loss curves (the last line per step) agree, and any `.corrupt` directory (a
checkpoint the resume found broken; a kill must not make one).
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
from absl import logging

MOMENTS = ("save", "eval", "drop", "random")
_KILLS = flags.DEFINE_integer("kills", 10, "SIGKILLs before the run may finish.")
_MOMENTS = flags.DEFINE_list("moments", list(MOMENTS),
                             f"Kill moments, taken in turn: {', '.join(MOMENTS)}.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random kill moments.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/drope_kill_resume",
                               "Holds reference/ and killed/ (emptied first).")

_POLL_S = 0.01  # an async save of the tiny model takes a few tenths of a second.
_SAVING = "*.orbax-checkpoint-tmp*"  # orbax's name for a step it has not finalized.
_EVALUATING = re.compile(r"evaluating the weights of checkpoint (\d+)")
_ENTERING = re.compile(r"^step (\d+): entering", flags=re.M)


def _train(workdir: pathlib.Path, train_args: list[str], log: pathlib.Path):
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *train_args,
         "--verbosity=0"]
  return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _curve(workdir: pathlib.Path) -> dict[int, tuple]:
  """step -> (phase, loss, tokens_seen) of the last line logged for that step."""
  lines = (json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines())
  return {m["step"]: (m["phase"], m["loss"], m["tokens_seen"]) for m in lines}


def _logged_steps(text: str) -> list[str]:
  """The metric lines of a run's output, in order."""
  return re.findall(r"^step\s+\d+/.*$", text, flags=re.M)


def _last_logged_step(text: str) -> int | None:
  lines = _logged_steps(text)
  return int(re.match(r"step\s+(\d+)", lines[-1])[1]) if lines else None


def _final_state(workdir: pathlib.Path):
  checkpoints = workdir / "checkpoints"
  step = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    return step, checkpointer.restore(checkpoints / str(step) / "state")


def _bitwise_equal(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def _saving(checkpoints: pathlib.Path, since: float = 0.0) -> set[str]:
  """The steps orbax has not finalized (`<step>.orbax-checkpoint-tmp`), of those written
  since `since` (time.time()): a killed save's stays until its step is saved again."""
  names = set()
  for path in checkpoints.glob(_SAVING):
    try:
      if path.stat().st_mtime >= since:
        names.add(path.name)
    except FileNotFoundError:  # finalized (renamed) meanwhile.
      pass
  return names


class _Moment:
  """Waits for one kind of moment in a running process; says what the kill struck."""

  def __init__(self, kind: str, proc, log: pathlib.Path, checkpoints: pathlib.Path, *,
               started: float, delay: float):
    self.kind, self.proc, self.log, self.checkpoints = kind, proc, log, checkpoints
    self._started, self._delay = started, delay  # for `random`.
    self._watched_since = time.time()  # this run's saves are newer.
    self._target = None  # what the watch found: a save's directory, a step.

  def wait(self) -> bool:
    """True once the moment has come (kill now); False if the process ended first."""
    while self.proc.poll() is None:
      if self.kind == "random":
        if time.perf_counter() - self._started >= self._delay:
          return True
      elif self.kind == "save":
        new = sorted(_saving(self.checkpoints, since=self._watched_since))
        if new:
          self._target = new[0]
          return True
      else:
        pattern = _EVALUATING if self.kind == "eval" else _ENTERING
        found = pattern.search(self.log.read_text())
        if found:
          self._target = int(found[1])
          return True
      time.sleep(_POLL_S)
    return False

  def struck(self) -> tuple[bool, str]:
    """After the kill: (whether it struck the moment aimed at, what it struck)."""
    text = self.log.read_text()
    if self.kind == "random":
      return True, f"{time.perf_counter() - self._started:.0f} s after the start"
    if self.kind == "save":
      step = self._target.split(".")[0]
      unfinished = (self.checkpoints / self._target).exists()
      return unfinished, f"save of {step} {'unfinished' if unfinished else 'finalized'}"
    if self.kind == "eval":
      # The evaluated update (checkpoint N's) logs its line with eval_loss after it.
      logged = any(re.match(rf"step\s+{self._target - 1}/.*eval_loss", line)
                   for line in _logged_steps(text))
      return not logged, f"evaluation of {self._target} {'done' if logged else 'unfinished'}"
    first_logged = any(re.match(rf"step\s+{self._target}/", line)
                       for line in _logged_steps(text))
    saving = any(p.startswith(f"{self._target}.") for p in _saving(self.checkpoints))
    return not first_logged, (f"drop at {self._target}"
                              + (", its save unfinished" if saving else "")
                              + (", first step logged" if first_logged else ""))


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads.
  train_args = argv[1:]
  unknown = set(_MOMENTS.value) - set(MOMENTS)
  if unknown:
    sys.exit(f"--moments: unknown {sorted(unknown)}; choose from {', '.join(MOMENTS)}")
  root = pathlib.Path(_WORKDIR.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  reference, killed = root / "reference", root / "killed"

  start = time.perf_counter()
  if _train(reference, train_args, root / "reference.log").wait():
    sys.exit(f"the uninterrupted run failed: see {root / 'reference.log'}")
  duration = time.perf_counter() - start
  text = (root / "reference.log").read_text()
  entering = _ENTERING.search(text)
  drop_step = int(entering[1]) if entering else None
  steps = int(re.search(r"done: (\d+) steps", text)[1])
  startup = float(re.search(r"first step done ([\d.]+) s", text)[1])
  seconds_per_step = (duration - startup) / steps
  print(f"uninterrupted run: {duration:.0f} s ({startup:.0f} s to its first step); "
        f"{steps} steps, drop at step {drop_step}")

  rng = random.Random(_SEED.value)
  print("| kill | moment | struck | last step logged | next run resumed from |")
  print("|---:|---|---|---:|---:|")
  hits = {kind: [0, 0] for kind in MOMENTS}  # kind -> [struck, aimed].
  for kill in range(1, _KILLS.value + 2):
    log = root / f"killed_{kill}.log"
    proc = _train(killed, train_args, log)
    resumed = re.search(r"resumed from \S+/(\d+) ", _wait_for_start(log, proc))
    started = time.perf_counter()
    resumed_from = int(resumed[1]) if resumed else 0
    if kill > 1:
      print(f"{resumed_from if resumed else 'nothing'} |", flush=True)
    if kill > _KILLS.value:
      break
    kind = _MOMENTS.value[(kill - 1) % len(_MOMENTS.value)]
    if kind == "drop" and (drop_step is None or resumed_from > drop_step):
      kind = "random"  # resumed past the drop: it will not come again.
    moment = _Moment(kind, proc, log, killed / "checkpoints", started=started,
                     delay=rng.uniform(0.1, 0.8) * (steps - resumed_from) * seconds_per_step)
    if not moment.wait():
      print(f"| {kill} | {kind} | run finished first | | |")
      break
    proc.kill()
    proc.wait()
    hit, what = moment.struck()
    hits[kind][0] += hit
    hits[kind][1] += 1
    print(f"| {kill} | {kind} | {what} | {_last_logged_step(log.read_text())} | ",
          end="", flush=True)
  if proc.wait():
    sys.exit(f"the last run failed: see {log}")

  print("moments struck: " + ", ".join(f"{kind} {hit}/{aimed}"
                                       for kind, (hit, aimed) in hits.items() if aimed))
  step_a, state_a = _final_state(reference)
  step_b, state_b = _final_state(killed)
  print(f"final checkpoint: step {step_a} vs {step_b}; parameters and optimizer state "
        f"bitwise equal: {step_a == step_b and _bitwise_equal(state_a, state_b)}")
  curve_a, curve_b = _curve(reference), _curve(killed)
  print(f"loss curve (phase, loss, tokens seen) equal at all {len(curve_a)} logged steps: "
        f"{curve_a == curve_b}")
  corrupt = sorted(p.name for p in (killed / "checkpoints").glob("*.corrupt*"))
  print(f".corrupt directories: {', '.join(corrupt) or 'none'}; unfinished saves left: "
        f"{', '.join(sorted(_saving(killed / 'checkpoints'))) or 'none'}")


def _wait_for_start(log: pathlib.Path, proc, timeout: float = 300) -> str:
  """The run's output once it has resumed or started its first step."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    text = log.read_text()
    if "resumed from" in text or _logged_steps(text):
      return text
    time.sleep(0.2)
  return log.read_text()


if __name__ == "__main__":
  app.run(main)
