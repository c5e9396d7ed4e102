"""The paper's from-scratch grid, end to end, through the public CLIs.

    python -m benchmarks.reproduce --scale=cpu --out=DIR
    python -m benchmarks.reproduce --scale=cpu --task=induction --out=DIR   # a rung
    python -m benchmarks.reproduce --scale=cpu --task=ladder --out=DIR      # every rung

`--task=prose` (the default) is the grid below; a synthetic rung of
drope_jax/data/tasks, or `ladder` for all of them, runs benchmarks/ladder.py.

1. A BPE tokenizer trained on the corpus (`drope_jax.data.train_tokenizer`) and
   ArrayRecord shards with a held-out split (`drope_jax.data.prepare`).
2. Four runs with the same seed, data order and budget (`drope_jax.train`):
     DIR/rope        RoPE throughout
     DIR/nope        NoPE throughout
     DIR/drope       RoPE, dropped at 87.5% of the steps (the paper's 14K of 16K)
     DIR/drope_half  RoPE, dropped at 50% (the paper's 8K of 16K)
   A DroPE run is the RoPE run up to its drop step (same seed, data, schedule), so
   it branches from the RoPE run's checkpoint there instead of training that part
   again: the checkpoint and the metrics up to it are copied, and `train` resumes
   from it as from its own. Each workdir is an ordinary run.
3. Evaluation of every run (`drope_jax.evaluate`): perplexity and NIAH at
   1x, 2x, 4x the training length on held-out text, PI / NTK / YaRN / dynamic
   NTK for RoPE, the fitted softmax temperature for NoPE and DroPE; then the
   analyses (attention around the needle per head, and the gradient of attention
   non-uniformity at initialisation, RoPE vs NoPE).
4. Controlled runs (DIR/controls/*): DroPE at 87.5% with one change each (a longer
   recalibration, its learning rate, its optimizer state), perplexity-evaluated, to
   explain where DroPE lands.
5. DIR/report.md with our numbers beside the paper's, and the plots.
`--stages` runs a subset (data, train, evaluate, analyses, controls, report).

Every stage is skipped when its output exists, so a crashed or killed grid picks up
where it stopped (and a killed run resumes from its last checkpoint).
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time

from benchmarks import reproduce_report

@dataclasses.dataclass(frozen=True)
class Scale:
  config: str
  vocab: int             # of the BPE tokenizer trained on the corpus.
  niah_trials: int       # per (variant, length, depth) cell.
  overrides: tuple = ()  # what the config does not set itself.


SCALES = {
    "cpu": Scale("configs/reproduce_cpu.py", 4096, 4),
    "gpu": Scale("configs/reproduce_gpu.py", 16384, 20),
    # The paper's 0.5B model and schedule, on our corpus and tokenizer.
    "tpu": Scale("configs/ablation_500m.py", 32768, 50, (
        "--config.model.vocab_size=32768", "--config.data.source=shards,needles",
        "--config.data.weights=1,10")),
}
LENGTHS = "1,2,4"
DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus",
                              "*.jsonl.gz")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str                      # its workdir under the grid's directory.
  variant: str                   # the config variant: rope | nope | drope.
  drop_fraction: float | None    # share of the steps trained with RoPE (drope only).
  change: str = ""               # controls: what differs from DroPE at 87.5%.
  overrides: tuple = ()          # controls: its config flags ({lr}: train.lr).


RUNS = (Run("rope", "rope", None), Run("nope", "nope", None),
        Run("drope", "drope", 0.875), Run("drope_half", "drope", 0.5))
# One change each from DroPE at 87.5%, to explain its in-context result: the
# recalibration's length, learning rate and optimizer state.
CONTROLS = (
    Run("controls/drop_at_75", "drope", 0.75, "drop at 75%: twice the recalibration"),
    Run("controls/recal_lr_peak", "drope", 0.875, "recalibration lr = pretraining peak",
        ("--config.drope.lr={lr}",)),
    Run("controls/keep_adam", "drope", 0.875, "AdamW moments kept at the drop",
        ("--config.drope.reset_optimizer=False",)),
)
STAGES = ("data", "train", "evaluate", "analyses", "controls", "report")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
  parser.add_argument("--task", default="prose",
                      help="prose, a rung of configs/ladder_<scale>.py, or ladder (all).")
  parser.add_argument("--runs", default=None,
                      help="Synthetic rungs: a comma-separated subset of the runs.")
  parser.add_argument("--eval_docs", type=int, default=None,
                      help="Synthetic rungs: documents per length (default: the "
                      "ladder's fixed setting).")
  parser.add_argument("--out", required=True, help="Directory of the grid.")
  parser.add_argument("--corpus", default=os.path.normpath(DEFAULT_CORPUS),
                      help="Training text: globs of .txt/.jsonl(.gz)/.parquet.")
  parser.add_argument("--steps", type=int, default=None,
                      help="Override the scale's train.steps (drop points follow).")
  parser.add_argument("--niah_trials", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0, help="NIAH prompt seed.")
  parser.add_argument("--stages", default=",".join(STAGES),
                      help=f"Comma-separated subset of {','.join(STAGES)}.")
  parser.add_argument("overrides", nargs="*",
                      help="Extra --config.x=y flags for every run (after --).")
  args = parser.parse_args()
  if args.task != "prose":
    from benchmarks import ladder  # pylint: disable=g-import-not-at-top
    if args.task not in ("ladder", *ladder.rungs(args.scale)):
      parser.error(f"--task={args.task}: use prose, ladder or one of "
                   f"{', '.join(ladder.rungs(args.scale))}")
    stages = [s for s in args.stages.split(",") if s in ladder.STAGES]
    ladder.run_ladder(args.scale, args.task, os.path.abspath(args.out), stages,
                      steps=args.steps, runs=args.runs and args.runs.split(","),
                      overrides=args.overrides,
                      eval_docs=args.eval_docs or ladder.EVAL_DOCS)
    return
  scale = SCALES[args.scale]
  trials = args.niah_trials or scale.niah_trials
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  grid = Grid(out, scale.config, args.corpus, scale.vocab, args.steps,
              [*scale.overrides, *args.overrides])

  stages = args.stages.split(",")
  if "data" in stages or "train" in stages:
    grid.prepare_data()
  if "train" in stages:
    for index, run in enumerate(RUNS):
      grid.train(run, index)
  if "evaluate" in stages:
    for index, run in enumerate(RUNS):
      grid.evaluate(run, index, trials=trials, seed=args.seed)
    grid.compare()
  if "analyses" in stages:
    for index, run in enumerate(RUNS):
      grid.analyse(run, index, seed=args.seed)
  if "controls" in stages:
    for index, run in enumerate(CONTROLS):
      grid.train(run, index, of=CONTROLS)
      grid.evaluate_perplexity(run)
  if "report" in stages:
    path = reproduce_report.write(
        out, [r.name for r in RUNS], steps=grid.steps, drop_steps=grid.drop_steps(),
        scale=args.scale, controls=[(r.name, r.change) for r in CONTROLS])
    print(f"[grid] wrote {path}", flush=True)


class Grid:

  def __init__(self, out, config_file, corpus, vocab, steps, overrides):
    self.out = out
    self.config_file = config_file
    self.corpus = corpus
    self.vocab = vocab
    self.overrides = list(overrides)
    self.steps = steps or _config_value(config_file, "train.steps")
    self.started = time.time()
    self.seconds_per_step = None  # measured on the first run trained here.

  # --- data ------------------------------------------------------------------------

  @property
  def tokenizer(self):
    return os.path.join(self.out, "tokenizer", "tokenizer.json")

  @property
  def data(self):
    return os.path.join(self.out, "data")

  def prepare_data(self):
    if not os.path.exists(self.tokenizer):
      _run("train_tokenizer", [
          "-m", "drope_jax.data.train_tokenizer", f"--input={self.corpus}",
          f"--output={self.tokenizer}", f"--vocab_size={self.vocab}"])
    # `prepare` finishes an interrupted preparation and skips finished shards.
    if not os.path.exists(os.path.join(self.data, "manifest.json")):
      _run("prepare", ["-m", "drope_jax.data.prepare", f"--input={self.corpus}",
                       f"--output={self.data}", f"--tokenizer=hf:{self.tokenizer}"])

  # --- training --------------------------------------------------------------------

  def drop_step(self, run: Run) -> int:
    return round(run.drop_fraction * self.steps)

  def drop_steps(self) -> dict:
    return {r.name: self.drop_step(r) for r in RUNS if r.drop_fraction}

  def flags(self, run: Run) -> list[str]:
    flags = [f"--config={self.config_file}:{run.variant}",
             f"--workdir={os.path.join(self.out, run.name)}",
             f"--config.train.steps={self.steps}",
             f"--config.data.paths={self.data}",
             f"--config.data.tokenizer=hf:{self.tokenizer}",
             f"--config.data.needle_haystack={self.corpus}"]
    if run.drop_fraction:
      flags.append(f"--config.drope.drop_at_step={self.drop_step(run)}")
    # The RoPE run keeps the checkpoints the DroPE runs branch from.
    flags.append(f"--config.checkpoint.keep_period={self._keep_period()}")
    lr = _config_value(self.config_file, "train.lr")
    return flags + self.overrides + [o.format(lr=lr) for o in run.overrides]

  def _keep_period(self) -> int:
    """A period that lands on every drop step."""
    return math.gcd(*(self.drop_step(r) for r in RUNS + CONTROLS if r.drop_fraction),
                    self.steps)

  def finished(self, run: Run) -> bool:
    return os.path.isdir(os.path.join(self.out, run.name, "checkpoints", str(self.steps)))

  def train(self, run: Run, index: int, of=RUNS):
    workdir = os.path.join(self.out, run.name)
    if self.finished(run):
      self._progress(index, f"{run.name}: trained", of)
      return
    steps_to_train = self.steps
    if run.drop_fraction:
      drop = self.drop_step(run)
      branch(os.path.join(self.out, "rope"), workdir, drop)
      steps_to_train -= drop
    self._progress(index, f"{run.name}: training {steps_to_train} steps", of)
    started = time.time()
    _run(f"train {run.name}", ["-m", "drope_jax.train", *self.flags(run)])
    if self.seconds_per_step is None:
      self.seconds_per_step = (time.time() - started) / steps_to_train

  # --- evaluation ------------------------------------------------------------------

  def evaluate(self, run: Run, index: int, *, trials: int, seed: int):
    workdir = os.path.join(self.out, run.name)
    done = os.path.join(workdir, "eval", "reproduce.done")
    if os.path.exists(done):
      self._progress(index, f"{run.name}: evaluated")
      return
    self._progress(index, f"{run.name}: evaluating")
    evaluate = ["-m", "drope_jax.evaluate", f"--workdir={workdir}"]
    if run.variant != "rope":  # a NoPE checkpoint: fit c of the softmax temperature.
      _run(f"fit temperature {run.name}", [*evaluate, "--fit_temperature", "--length=4"])
    _run(f"evaluate {run.name}", [
        *evaluate, f"--lengths={LENGTHS}", "--evals=perplexity,niah",
        f"--niah_trials={trials}", f"--seed={seed}"])
    with open(done, "w") as f:
      f.write("ok\n")

  def analyse(self, run: Run, index: int, *, seed: int):
    """Attention around the needle for every run; RoPE vs NoPE gradients at init once
    (the RoPE run's initial weights are every run's: same config and seed)."""
    workdir = os.path.join(self.out, run.name)
    done = os.path.join(workdir, "eval", "analyses.done")
    if os.path.exists(done):
      return
    self._progress(index, f"{run.name}: analyses")
    evals = "needle_attention,nonuniformity_grad" if run.name == "rope" else "needle_attention"
    _run(f"analyse {run.name}", [
        "-m", "drope_jax.evaluate", f"--workdir={workdir}", f"--evals={evals}",
        f"--lengths={LENGTHS}", "--niah_variants=single,multikey", "--niah_trials=4",
        f"--seed={seed}"])
    with open(done, "w") as f:
      f.write("ok\n")

  def evaluate_perplexity(self, run: Run):
    """Controls: perplexity at every length (their in-context and length results)."""
    workdir = os.path.join(self.out, run.name)
    if not os.path.exists(os.path.join(workdir, "eval", "perplexity_nope.json")):
      _run(f"evaluate {run.name}", ["-m", "drope_jax.evaluate", f"--workdir={workdir}",
                                    f"--lengths={LENGTHS}", "--evals=perplexity"])

  def compare(self):
    _run("compare", ["-m", "drope_jax.evaluate", "--compare",
                     *[os.path.join(self.out, r.name) for r in RUNS],
                     f"--out={os.path.join(self.out, 'compare')}"])

  def _steps_left(self, runs) -> int:
    return sum(self.steps - (self.drop_step(r) if r.drop_fraction else 0)
               for r in runs if not self.finished(r))

  def _progress(self, index: int, what: str, runs=RUNS):
    elapsed = time.time() - self.started
    eta = ""
    if self.seconds_per_step:
      eta = f", training left ~{self._steps_left(runs) * self.seconds_per_step / 60:.0f} min"
    print(f"[grid] run {index + 1} of {len(runs)}: {what} "
          f"(elapsed {elapsed / 60:.0f} min{eta})", flush=True)


def branch(source: str, workdir: str, step: int):
  """Starts `workdir` from the run in `source` at checkpoint `step`: the checkpoint and
  the metrics before it are copied, so that `train` on `workdir` resumes from there.

  The caller vouches that both runs are identical up to `step` (same config up to the
  positional switch, seed and data): a DroPE run and the RoPE run before its drop.
  """
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    return  # branched before (and perhaps trained since): `train` resumes.
  os.makedirs(workdir, exist_ok=True)
  checkpoint = os.path.join(source, "checkpoints", str(step))
  if not os.path.isdir(checkpoint):
    raise SystemExit(f"[grid] {checkpoint} is missing: {source} must keep its "
                     f"checkpoint at step {step} (checkpoint.keep_period)")
  # Copied beside, then renamed: a copy cut short is never mistaken for a checkpoint.
  staging = checkpoints + ".staging"
  shutil.rmtree(staging, ignore_errors=True)
  shutil.copytree(checkpoint, os.path.join(staging, str(step)))
  with open(os.path.join(source, "metrics.jsonl")) as f:
    lines = [line for line in f if json.loads(line)["step"] < step]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(lines)
  os.makedirs(checkpoints, exist_ok=True)
  os.rename(os.path.join(staging, str(step)), os.path.join(checkpoints, str(step)))
  os.rmdir(staging)
  print(f"[grid] {workdir}: branched from {source} at step {step}",
        flush=True)


def _run(name: str, args: list[str]):
  started = time.time()
  print(f"[grid] {name}: python {' '.join(args)}", flush=True)
  result = subprocess.run([sys.executable, *args])
  if result.returncode:
    raise SystemExit(f"[grid] {name} failed (exit {result.returncode}); rerun the same "
                     "command to resume")
  print(f"[grid] {name}: done in {(time.time() - started) / 60:.1f} min", flush=True)


def _config_value(config_file: str, dotted: str):
  spec = importlib.util.spec_from_file_location("grid_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  value = module.get_config("rope")
  for part in dotted.split("."):
    value = value[part]
  return value


if __name__ == "__main__":
  main()
