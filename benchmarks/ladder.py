"""The synthetic-task grid: one rung of drope_jax/data/tasks, or the whole ladder.

    python -m benchmarks.reproduce --scale=cpu --task=induction --out=DIR
    python -m benchmarks.reproduce --scale=cpu --task=ladder --out=DIR   # every rung

Per rung (DIR/<rung>/ with --task=ladder, else DIR itself), from one seed and one
data order, through the public CLIs:
  rope, nope         trained throughout with RoPE / NoPE
  drope, drope_half  the RoPE run dropped at 87.5% / 50% of the steps, recalibrated
  sweep/*            the recalibration sweep: other drop points, QK-norm added at the
                     drop, the recalibration learning rate (one change each)
Every DroPE run branches from the RoPE run's checkpoint at its drop step. Training
logs the task's accuracy at 1x every `train.eval_every` steps (the learning and
recovery curves); `evaluate --evals=<task>` then scores fresh documents at 1x, 2x,
4x, 8x with every method (RoPE as is, PI, NTK, YaRN, dynamic NTK; NoPE as is and with
the softmax temperature fitted on other documents at 4x), and benchmarks/ladder_heads.py
measures where the heads look before and after the drop. The evaluation settings below
are fixed before any grid runs and are the same for every run.
"""

import dataclasses
import importlib.util
import json
import math
import os
import time

from benchmarks import ladder_report
from benchmarks import reproduce as reproduce_lib
from benchmarks import reproduce_report

# Fixed before the grid ran; never chosen by looking at results.
LENGTHS = "1,2,4,8"
EVAL_DOCS = 128        # documents per length (their answers are scored).
FIT_DOCS = 64          # documents of the fit stream the temperature is fitted on.
EVAL_SEED = 0          # evaluation documents; training draws from another stream.
FIT_LENGTH = 4         # the NoPE softmax temperature is fitted at 4x.

Run = reproduce_lib.Run
SWEEP = (
    Run("sweep/drop_25", "drope", 0.25, "drop at 25%"),
    Run("sweep/drop_75", "drope", 0.75, "drop at 75%"),
    Run("sweep/qk_norm", "drope", 0.875, "QK-norm on q added at the drop",
        ("--config.drope.qk_norm=q",)),
    Run("sweep/recal_lr_3e-4", "drope", 0.875, "recalibration lr 3e-4 (default 1e-3)",
        ("--config.drope.lr=3e-4",)),
    Run("sweep/recal_lr_peak", "drope", 0.875, "recalibration lr = pretraining peak",
        ("--config.drope.lr={lr}",)),
)
STAGES = ("train", "evaluate", "analyses", "report")
LADDER_CONFIGS = {"cpu": "configs/ladder_cpu.py", "gpu": "configs/ladder_gpu.py"}


def rungs(scale: str) -> list[str]:
  return list(_config_module(LADDER_CONFIGS[scale]).RUNGS)


def run_ladder(scale: str, task: str, out: str, stages: list[str], *,
               steps: int | None = None, runs: list[str] | None = None,
               overrides=(), eval_docs: int = EVAL_DOCS):
  """`runs`: a subset of the run names (default all); `steps`, `overrides` (config
  flags for every run) and `eval_docs` resize a grid, e.g. for a smoke test."""
  names = rungs(scale) if task == "ladder" else [task]
  started = time.time()
  for index, rung in enumerate(names):
    rung_out = os.path.join(out, rung) if task == "ladder" else out
    print(f"[ladder] rung {index + 1} of {len(names)}: {rung} -> {rung_out} (elapsed "
          f"{(time.time() - started) / 60:.0f} min)", flush=True)
    TaskGrid(rung_out, LADDER_CONFIGS[scale], rung, steps=steps, runs=runs,
             overrides=overrides, eval_docs=eval_docs).run(stages, scale)
  if task == "ladder" and "report" in stages:
    path = ladder_report.write_ladder(out, names, scale=scale,
                                      minutes=(time.time() - started) / 60)
    print(f"[ladder] wrote {path}", flush=True)


class TaskGrid(reproduce_lib.Grid):
  """The prose Grid's branching, training and progress, on a task rung's config."""

  def __init__(self, out: str, config_file: str, rung: str, *, steps=None, runs=None,
               overrides=(), eval_docs: int = EVAL_DOCS):
    os.makedirs(out, exist_ok=True)
    self.rung = rung
    config = _config_module(config_file).get_config(f"{rung}:rope")
    self.task = next(s for s in config.data.source.split(",") if s in _task_names())
    super().__init__(out, config_file, corpus=None, vocab=None,
                     steps=steps or config.train.steps, overrides=overrides)
    self.lr = config.train.lr
    self.runs = tuple(r for r in reproduce_lib.RUNS + SWEEP if not runs or r.name in runs)
    self.eval_docs = eval_docs
    self.timings = _read_json(self._timings_path)

  def run(self, stages, scale):
    if "train" in stages:
      for index, run in enumerate(self.runs):
        self.timed("train", run, lambda r=run, i=index: self.train(r, i, of=self.runs))
    if "evaluate" in stages:
      for run in self.runs:
        self.timed("evaluate", run, lambda r=run: self.evaluate_task(r))
    if not self.finished(reproduce_lib.RUNS[0]):
      print(f"[ladder] {self.rung}: no finished RoPE run to analyse or report; train it "
            "first (--stages=train,evaluate)", flush=True)
      return
    if "analyses" in stages and not os.path.exists(os.path.join(self.out, "heads.json")):
      reproduce_lib._run("attention heads", ["-m", "benchmarks.ladder_heads", self.out])
    if "report" in stages:
      path = ladder_report.write_rung(
          self.out, rung=self.rung, task=self.task, scale=scale, steps=self.steps,
          runs=[(r.name, r.change or reproduce_report.RUN_NAMES.get(r.name, r.name))
                for r in self.runs],
          drop_steps={r.name: self.drop_step(r) for r in self.runs if r.drop_fraction},
          settings=dict(lengths=LENGTHS, docs=self.eval_docs, seed=EVAL_SEED,
                        fit_length=FIT_LENGTH, fit_docs=min(FIT_DOCS, self.eval_docs)),
          timings=self.timings)
      print(f"[ladder] wrote {path}", flush=True)

  @property
  def _timings_path(self) -> str:
    return os.path.join(self.out, "timings.json")

  def timed(self, stage, run, work):
    """Runs `work`; its minutes go to DIR/timings.json unless it was done before."""
    started = time.time()
    work()
    if time.time() - started > 1:  # a stage found done takes no time.
      self.timings.setdefault(stage, {})[run.name] = time.time() - started
      with open(self._timings_path, "w") as f:
        json.dump(self.timings, f, indent=1)

  def drop_steps(self) -> dict:
    return {r.name: self.drop_step(r) for r in self.runs if r.drop_fraction}

  def _keep_period(self) -> int:
    return math.gcd(*(self.drop_step(r) for r in reproduce_lib.RUNS + SWEEP
                      if r.drop_fraction), self.steps)

  def flags(self, run) -> list[str]:
    flags = [f"--config={self.config_file}:{self.rung}:{run.variant}",
             f"--workdir={os.path.join(self.out, run.name)}",
             f"--config.train.steps={self.steps}",
             # Checkpoints land on every drop step, and the RoPE run keeps them.
             f"--config.checkpoint.every_steps={self._keep_period()}",
             f"--config.checkpoint.keep_period={self._keep_period()}"]
    if run.drop_fraction:
      flags.append(f"--config.drope.drop_at_step={self.drop_step(run)}")
    return flags + self.overrides + [o.format(lr=self.lr) for o in run.overrides]

  def evaluate_task(self, run):
    workdir = os.path.join(self.out, run.name)
    done = os.path.join(workdir, "eval", "ladder.done")
    if os.path.exists(done):
      return
    evaluate = ["-m", "drope_jax.evaluate", f"--workdir={workdir}"]
    sweep = run.name.startswith("sweep/")
    if run.variant != "rope" and not sweep:  # NoPE checkpoints: fit c at 4x first.
      reproduce_lib._run(f"fit temperature {run.name}", [
          *evaluate, "--fit_temperature", f"--length={FIT_LENGTH}",
          f"--task_docs={min(FIT_DOCS, self.eval_docs)}", f"--seed={EVAL_SEED}"])
    reproduce_lib._run(f"evaluate {run.name}", [
        *evaluate, f"--evals={self.task}", f"--lengths={LENGTHS}",
        f"--task_docs={self.eval_docs}", f"--seed={EVAL_SEED}",
        *(["--methods=none"] if sweep else [])])
    with open(done, "w") as f:
      f.write("ok\n")


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _task_names():
  from drope_jax.data import tasks  # pylint: disable=g-import-not-at-top
  return tasks.TASKS


def _config_module(path: str):
  spec = importlib.util.spec_from_file_location("ladder_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
