"""`python -m drope_jax.evaluate`: long-context evaluation of a run's checkpoint.

  python -m drope_jax.evaluate --workdir=DIR [--step=N] [--evals=perplexity,niah]
      [--evals=needle_attention,nonuniformity_grad] [--nonuniformity_rows=8]
      [--lengths=1,2,4,8] [--methods=auto] [--temperature_c=0.412] [--eval_data=GLOB]
      [--niah_trials=10] [--niah_depths=0,0.25,0.5,0.75,1] [--niah_variants=...]
      [--attention=chunked]
  python -m drope_jax.evaluate --workdir=DIR --evals=recall,copy,induction
      [--task_docs=256] [--seed=0]
  python -m drope_jax.evaluate --workdir=DIR --fit_temperature [--length=4]
  python -m drope_jax.evaluate --compare DIR1 DIR2 ... --out=DIR

Lengths are multiples of the run's train.seq_len. Methods depend on the checkpoint:
a RoPE checkpoint (a RoPE run, or a DroPE run before its drop) is evaluated as is
('none') and with the RoPE scalings pi, ntk, yarn, dynamic_ntk (factor = the length
multiple); a NoPE checkpoint (NoPE run, DroPE after the drop) as is and with the
softmax temperature beta = 1 + c ln(s) ('temperature': c from --temperature_c, else
from a previous --fit_temperature). Outputs, under DIR/eval/:
  perplexity_<method>.json, niah_<method>.json   schema of drope_jax/eval/report.py
  needle_attention_<method>.json                 per-head attention on the needle at
                                                 the NIAH prompts' last position
                                                 (drope_jax/eval/needle_attention.py)
  nonuniformity_grad.json                        RoPE vs NoPE gradient towards
                                                 non-uniform attention at initialisation
                                                 (drope_jax/eval/nonuniformity.py)
  recall_<method>.json, copy_<method>.json,      synthetic-task accuracy per length and
  induction_<method>.json                        by distance (eval/evaluations/
                                                 task_accuracy.py)
  temperature.json                               the fitted c (--fit_temperature)
  report.md + PNGs                               every method evaluated so far
where <method> is rope, pi, ntk, yarn, dynamic_ntk, nope or temperature.

Each --evals name is an evaluation of drope_jax/eval/registry.py: one module of
drope_jax/eval/evaluations/, with the interface of drope_jax/eval/api.py. This file
parses the flags into api.Options, restores the checkpoint, resolves its methods
(eval/methods.py) and runs the evaluations asked for; --fit_temperature is
eval/temperature.py's, --compare eval/report.py's.
"""

import os

from absl import flags
from absl import logging

from drope_jax import cli
from drope_jax import compilation_cache
from drope_jax import errors
from drope_jax.data import needles
from drope_jax.eval import api
from drope_jax.eval import loading
from drope_jax.eval import methods
from drope_jax.eval import niah_runner
from drope_jax.eval import registry
from drope_jax.eval import report
from drope_jax.eval import temperature
from drope_jax.eval.errors import EvalError
from drope_jax.model import kernels

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_EVALS = flags.DEFINE_list(
    "evals", ["perplexity", "niah"],
    f"Evaluations, some of: {', '.join(registry.EVALUATIONS)} (the NIAH flags "
    "choose needle_attention's prompts too).")
_LENGTHS = flags.DEFINE_list("lengths", ["1", "2", "4", "8"],
                             "Evaluation lengths, as multiples of train.seq_len.")
_METHODS = flags.DEFINE_list(
    "methods", ["auto"], "auto, or a list of: none, pi, ntk, yarn, dynamic_ntk (RoPE "
    "checkpoints); none, temperature (NoPE checkpoints).")
_TEMPERATURE_C = flags.DEFINE_float(
    "temperature_c", None, "c of beta = 1 + c ln(s) for NoPE; default: the fitted one.")
_EVAL_DATA = flags.DEFINE_string(
    "eval_data", None, "Held-out text files (.txt/.jsonl/.jsonl.gz/.parquet globs, "
    "comma-separated) instead of the run's eval split.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSON field / column of text.")
_EVAL_TOKENS = flags.DEFINE_integer(
    "eval_tokens", 32768, "Held-out tokens scored at every length (the same text).")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 8192, "Tokens per forward pass.")
_NIAH_TRIALS = flags.DEFINE_integer("niah_trials", 10, "Prompts per NIAH cell.")
_NIAH_DEPTHS = flags.DEFINE_list(
    "niah_depths", [str(d) for d in niah_runner.DEPTHS], "Needle depths in [0, 1].")
_NIAH_VARIANTS = flags.DEFINE_list("niah_variants", list(needles.VARIANTS),
                                   "NIAH variants.")
_ATTENTION = flags.DEFINE_enum(
    "attention", None, list(kernels.IMPLS),
    f"Attention kernel; default the run's, and chunked beyond {kernels.XLA_MAX_LEN} "
    "tokens.")
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of the NIAH prompts and of the synthetic tasks' documents (their "
    "evaluation stream, which training never draws from).")
_TASK_DOCS = flags.DEFINE_integer(
    "task_docs", 256, "Synthetic tasks (recall, copy, induction): documents per length.")
_NONUNIFORMITY_ROWS = flags.DEFINE_integer(
    "nonuniformity_rows", 8, "nonuniformity_grad: held-out windows of train.seq_len.")
_FIT = flags.DEFINE_bool("fit_temperature", False,
                         "Fit c of the NoPE softmax temperature instead.")
_FIT_LENGTH = flags.DEFINE_float("length", 4, "--fit_temperature: target multiple.")
_COMPARE = flags.DEFINE_bool("compare", False,
                             "Compare the runs given as arguments into --out.")
_OUT = flags.DEFINE_string("out", None, "--compare: output directory.")


def say(message: str):
  print(message, flush=True)


def _options() -> api.Options:
  """The evaluation flags, checked before the checkpoint is restored."""
  _check_choices("niah_variants", _NIAH_VARIANTS.value, needles.VARIANTS)
  depths = _parse_depths(_NIAH_DEPTHS.value)
  if _TASK_DOCS.value < 1:
    raise EvalError(f"--task_docs={_TASK_DOCS.value}: use a positive number of documents")
  if _NONUNIFORMITY_ROWS.value < 1:
    raise EvalError(f"--nonuniformity_rows={_NONUNIFORMITY_ROWS.value}: use a positive "
                    "number of windows")
  return api.Options(
      eval_data=_EVAL_DATA.value, text_field=_TEXT_FIELD.value,
      eval_tokens=_EVAL_TOKENS.value, batch_tokens=_BATCH_TOKENS.value,
      niah_trials=_NIAH_TRIALS.value, niah_depths=depths,
      niah_variants=tuple(_NIAH_VARIANTS.value), attention=_ATTENTION.value,
      seed=_SEED.value, nonuniformity_rows=_NONUNIFORMITY_ROWS.value,
      task_docs=_TASK_DOCS.value)


def _parse_depths(values) -> tuple[float, ...]:
  try:
    depths = [float(d) for d in values]
  except ValueError as e:
    raise EvalError(f"--niah_depths={','.join(values)}: use numbers in [0, 1]") from e
  if not depths or not all(0 <= d <= 1 for d in depths):
    raise EvalError(f"--niah_depths={','.join(values)}: use numbers in [0, 1]")
  return tuple(depths)


def _check_choices(flag: str, values, allowed):
  unknown = [v for v in values if v not in allowed]
  if unknown or not values:
    raise EvalError(f"--{flag}={','.join(values)}: use some of {', '.join(allowed)}")


def compare(dirs, out: str | None):
  if not dirs:
    raise EvalError("--compare needs the run directories as arguments")
  if not out:
    raise EvalError("--compare needs --out=DIR for the table and plots")
  try:
    path = report.write_report(list(dirs), out)
  except ValueError as e:  # no or malformed evaluation JSON.
    raise EvalError(str(e)) from e
  say(f"wrote {path}")


def evaluate(workdir: str):
  _check_choices("evals", _EVALS.value, registry.EVALUATIONS)
  options = _options()
  say(f"restoring {workdir} (step {_STEP.value if _STEP.value is not None else 'latest'})")
  run = loading.load_run(workdir, _STEP.value)
  # The run's cache (its config's compilation_cache_dir): a rerun skips the compiles.
  try:
    compilation_cache.enable(run.config.get("compilation_cache_dir"), workdir)
  except errors.BadInput as e:  # a path of the machine that trained it: evaluate anyway.
    say(f"compilation cache off: {e}")
  kind = run.positional().kind
  say(f"{run.name} step {run.step}: phase {run.phase}, {methods.KIND_NAMES[kind]}, "
      f"trained at {run.train_len} tokens")
  if _FIT.value:
    temperature.fit_and_write(run, _FIT_LENGTH.value, options, say)
    return
  lengths = methods.lengths_of(run, _LENGTHS.value)
  chosen = methods.resolve_methods(run, _METHODS.value, _TEMPERATURE_C.value, say=say)
  c = next((f" (c = {m.c:g})" for m in chosen if m.name == "temperature"), "")
  say(f"methods: {', '.join(m.name for m in chosen)}{c}; lengths: "
      f"{', '.join(map(str, lengths))}")
  ctx = api.Context(run=run, methods=tuple(chosen), lengths=tuple(lengths),
                    options=options, say=say)
  # In the registry's order whatever --evals says: each runs once.
  for name, evaluation in registry.EVALUATIONS.items():
    if name in _EVALS.value:
      evaluation.run(ctx)
  path = report.write_report([workdir], os.path.join(workdir, "eval"))
  say(f"wrote {path}; {compilation_cache.summary()}")


def main(argv):
  logging.set_verbosity(logging.ERROR)  # orbax logs every file it touches.
  if _COMPARE.value:
    compare(argv[1:], _OUT.value)
    return
  if len(argv) > 1:
    raise EvalError(f"unexpected arguments: {' '.join(argv[1:])} (did you mean "
                    "--compare?)")
  if not _WORKDIR.value:
    raise EvalError("pass --workdir=DIR (a run's directory) or --compare DIR...")
  evaluate(_WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
