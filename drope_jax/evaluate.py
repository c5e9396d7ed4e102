"""`python -m drope_jax.evaluate`: long-context evaluation of a run's checkpoint.

  python -m drope_jax.evaluate --workdir=DIR [--step=N] [--evals=perplexity,niah]
      [--evals=needle_attention,nonuniformity_grad] [--nonuniformity_rows=8]
      [--lengths=1,2,4,8] [--methods=auto] [--temperature_c=0.412] [--eval_data=GLOB]
      [--niah_trials=10] [--niah_depths=0,0.25,0.5,0.75,1] [--niah_variants=...]
      [--attention=chunked]
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
  temperature.json                               the fitted c (--fit_temperature)
  report.md + PNGs                               every method evaluated so far
where <method> is rope, pi, ntk, yarn, dynamic_ntk, nope or temperature.
"""

import dataclasses
import json
import math
import os
import time

from absl import flags
from absl import logging
import jax

from drope_jax import cli
from drope_jax import compilation_cache
from drope_jax import errors
from drope_jax import optim
from drope_jax import train_step
from drope_jax.eval import heldout
from drope_jax.eval import loading
from drope_jax.eval import needle_attention
from drope_jax.eval import niah_runner
from drope_jax.eval import nonuniformity
from drope_jax.data import needles
from drope_jax.eval import perplexity
from drope_jax.eval import report
from drope_jax.eval import temperature
from drope_jax.model import kernels
from drope_jax.model import rope_scaling
from drope_jax.model.positional import Positional

EVALS = ("perplexity", "niah", "needle_attention", "nonuniformity_grad")
METHODS = {"rope": ("none", "pi", "ntk", "yarn", "dynamic_ntk"),
           "nope": ("none", "temperature")}
KIND_NAMES = {"rope": "RoPE", "nope": "NoPE"}

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_EVALS = flags.DEFINE_list(
    "evals", ["perplexity", "niah"], "Evaluations: perplexity, niah; the analyses "
    "needle_attention (NIAH flags choose its prompts), nonuniformity_grad.")
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
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the NIAH prompts.")
_NONUNIFORMITY_ROWS = flags.DEFINE_integer(
    "nonuniformity_rows", 8, "nonuniformity_grad: held-out windows of train.seq_len.")
_FIT = flags.DEFINE_bool("fit_temperature", False,
                         "Fit c of the NoPE softmax temperature instead.")
_FIT_LENGTH = flags.DEFINE_float("length", 4, "--fit_temperature: target multiple.")
_COMPARE = flags.DEFINE_bool("compare", False,
                             "Compare the runs given as arguments into --out.")
_OUT = flags.DEFINE_string("out", None, "--compare: output directory.")


class EvalError(errors.BadInput, ValueError):
  """Bad input to the evaluation; the message names it and the fix."""


def say(message: str):
  print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str          # rope | pi | ntk | yarn | dynamic_ntk | nope | temperature.
  base: Positional   # the checkpoint's own positional mode.
  c: float | None = None

  def positional(self, length: int, train_len: int) -> Positional:
    s = max(1.0, length / train_len)
    if self.name in ("rope", "nope"):
      return self.base
    if self.name == "temperature":
      beta = rope_scaling.softmax_temperature(self.c, length, train_len)
      return dataclasses.replace(self.base, temperature=beta)
    return dataclasses.replace(self.base, scaling=self.name, factor=s,
                               original_max_len=train_len)

  def record(self) -> dict:
    extra = {"temperature_c": self.c} if self.name == "temperature" else {}
    return {"method": self.name, "positional": self.base.kind, **extra}


def resolve_methods(run: loading.Run, requested, c: float | None) -> list[Method]:
  base = run.positional()
  allowed = METHODS[base.kind]
  what = f"{run.name} step {run.step} is a {KIND_NAMES[base.kind]} checkpoint"
  if base.scaling != "none":  # its own RoPE scaling (an imported Llama 3.x, ...).
    allowed = ("none",)
    what += (f" with its own RoPE scaling ({base.scaling}), which evaluation-time "
             "scalings would replace")
  if c is None and "temperature" in allowed:
    c = _saved_c(run)
  if list(requested) == ["auto"]:
    names = [m for m in allowed if m != "temperature" or c]
    if c == 0 and "temperature" in allowed:
      say("c = 0 (beta = 1): 'temperature' would repeat the NoPE rows; not evaluated")
  else:
    names = list(dict.fromkeys("none" if n == base.kind else n for n in requested))
    for name in names:
      if name not in allowed:
        raise EvalError(f"unknown method {name!r}: {what}; use auto or some of "
                        f"{', '.join(allowed)}")
  if "temperature" in names and c is None:
    raise EvalError("method 'temperature' needs c: pass --temperature_c or run "
                    "--fit_temperature first")
  return [Method(base.kind if n == "none" else n, base, c) for n in names]


def _saved_c(run) -> float | None:
  path = os.path.join(run.workdir, "eval", "temperature.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return float(json.load(f)["c"])


def lengths_of(run: loading.Run, multiples) -> list[int]:
  try:
    lengths = sorted({round(float(m) * run.train_len) for m in multiples})
  except ValueError as e:
    raise EvalError(f"--lengths={','.join(multiples)}: use numbers, e.g. 1,2,4,8") from e
  if not lengths or lengths[0] < 2:
    raise EvalError(f"--lengths={','.join(multiples)} must be positive multiples")
  return lengths


def attention_for(configured: str, length: int, override: str | None) -> str:
  """The kernel at this length: the chunked kernel keeps long contexts linear."""
  if override:
    return override
  if length <= kernels.XLA_MAX_LEN:
    return configured
  if configured == "xla" or (configured == "auto" and jax.default_backend() != "tpu"):
    return "chunked"
  return configured  # splash, cudnn, auto on TPU (splash): already linear.


def rows_for(run: loading.Run, length: int, batch_tokens: int) -> int:
  multiple = loading.batch_multiple(run.mesh)
  rows = max(1, batch_tokens // length)
  return -(-rows // multiple) * multiple


def _write_json(run, kind: str, method: Method, data: dict) -> str:
  directory = os.path.join(run.workdir, "eval")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{kind}_{method.name}.json")
  record = dict(run=run.name, **method.record(), step=run.step, phase=run.phase,
                train_len=run.train_len, **data)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return path


def evaluate_perplexity(run, methods, lengths, *, stream, attention, batch_tokens):
  edges = perplexity.bucket_edges(run.train_len, lengths[-1])
  for method in methods:
    results, kernels = [], []
    for length in lengths:
      kernel = attention_for(run.config.model.attention, length, attention)
      started = time.perf_counter()
      windows = heldout.windows(stream, length, max(1, (len(stream) - 1) // length))
      result = perplexity.evaluate(
          run.graphdef(kernel), run.params, windows,
          positional=method.positional(length, run.train_len), mesh=run.mesh,
          batch_size=rows_for(run, length, batch_tokens), progress=say)
      say(f"perplexity {method.name:>11} length {length:>6} ({kernel}): "
          f"{result.perplexity:9.3f} over {result.tokens} tokens "
          f"({time.perf_counter() - started:.0f}s)")
      results.append(result)
      kernels.append(kernel)
    path = _write_json(run, "perplexity", method, dict(
        lengths=lengths, perplexity=[r.perplexity for r in results],
        loss=[r.loss for r in results], tokens=[r.tokens for r in results],
        attention=kernels, position_buckets=dict(edges=edges, loss={
            str(r.length): r.bucket_losses(edges) for r in results})))
    say(f"wrote {path}")


def evaluate_niah(run, methods, lengths, *, haystack, depths, variants, trials, seed,
                  batch_tokens):
  tokenizer = run.tokenizer()
  graphdef = run.graphdef()
  for method in methods:
    say(f"niah {method.name}: {len(variants)} variants x {len(depths)} depths x "
        f"{trials} trials at lengths {', '.join(map(str, lengths))}")
    results = niah_runner.run(
        graphdef, run.params, tokenizer=tokenizer, haystack=haystack, lengths=lengths,
        variants=variants, depths=depths, trials=trials,
        positional_for=lambda length, m=method: m.positional(length, run.train_len),
        rows_for=lambda length: rows_for(run, length, batch_tokens), seed=seed,
        vocab_limit=tokenizer.vocab_size, progress=say)
    if not results:
      raise EvalError(f"no NIAH prompt fits lengths {', '.join(map(str, lengths))}: "
                      "evaluate longer lengths or fewer needles (--niah_variants)")
    path = _write_json(run, "niah", method, dict(results=results, seed=seed))
    say(f"wrote {path}")


def evaluate_needle_attention(run, methods, lengths, *, haystack, depths, variants,
                              trials, seed, attention, batch_tokens):
  tokenizer = run.tokenizer()
  for method in methods:
    say(f"needle attention {method.name}: {len(variants)} variants x {len(depths)} "
        f"depths x {trials} trials at lengths {', '.join(map(str, lengths))}")
    data = needle_attention.run(
        lambda length: run.graphdef(attention_for(run.config.model.attention, length,
                                                  attention)),
        run.params, tokenizer=tokenizer, haystack=haystack, lengths=lengths,
        variants=variants, depths=depths, trials=trials,
        positional_for=lambda length, m=method: m.positional(length, run.train_len),
        rows_for=lambda length: rows_for(run, length, batch_tokens), mesh=run.mesh,
        seed=seed, progress=say)
    if not data["lengths"]:
      raise EvalError(f"no NIAH prompt fits lengths {', '.join(map(str, lengths))}: "
                      "evaluate longer lengths or fewer needles (--niah_variants)")
    cfg = run.model_config
    path = _write_json(run, "needle_attention", method, dict(
        data, layers=cfg.n_layers, heads=cfg.n_heads, variants=list(variants),
        depths=list(depths), trials=trials, seed=seed))
    say(f"wrote {path}")


def evaluate_nonuniformity(run, *, rows, eval_data, text_field):
  """At the run's initial weights (its config and seed), RoPE vs NoPE."""
  multiple = loading.batch_multiple(run.mesh)
  rows = -(-rows // multiple) * multiple
  stream = heldout.token_stream(run.config, rows * run.train_len + 1,
                                eval_data=eval_data, text_field=text_field)
  windows = heldout.windows(stream, run.train_len, rows)
  if len(windows) < rows:
    raise EvalError(f"--nonuniformity_rows={rows} needs {rows * run.train_len + 1} "
                    f"held-out tokens; raise --eval_tokens or lower the rows")
  _, init = train_step.build(run.config, run.mesh, optim.make_optimizer(run.config.train))
  theta = float(run.config.model.rope_theta)
  positionals = {kind: Positional(kind=kind, theta=theta) for kind in ("rope", "nope")}
  say(f"nonuniformity gradient at initialisation (seed {run.config.seed}): RoPE and "
      f"NoPE on {rows} windows of {run.train_len} tokens")
  results = nonuniformity.measure(run.graphdef("xla"), init().params,
                                  [windows[:, :-1]], positionals=positionals,
                                  mesh=run.mesh)
  for kind, result in results.items():
    say("  " + KIND_NAMES[kind] + " grad norm per layer: " + "; ".join(
        f"{name} " + " ".join(f"{g:.3g}" for g in result[name]["grad_norm"])
        for name in nonuniformity.OBJECTIVES))
  directory = os.path.join(run.workdir, "eval")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "nonuniformity_grad.json")
  with open(path, "w") as f:
    json.dump(dict(run=run.name, weights="init", seed=int(run.config.seed),
                   train_len=run.train_len, rows=rows, tokens=rows * run.train_len,
                   layers=run.model_config.n_layers, nonuniformity=results), f, indent=1)
  say(f"wrote {path}")


def fit_temperature(run, multiple: float, *, stream, attention, batch_tokens):
  base = run.positional()
  if base.kind != "nope":
    raise EvalError(f"{run.name} step {run.step} is a RoPE checkpoint: the softmax "
                    "temperature is fitted for NoPE / DroPE (recalibrated) checkpoints")
  length = lengths_of(run, [str(multiple)])[0]
  if length <= run.train_len:
    raise EvalError(f"--length={multiple}: fit the temperature beyond the training "
                    "length (a multiple > 1)")
  kernel = attention_for(run.config.model.attention, length, attention)
  graphdef = run.graphdef(kernel)
  windows = heldout.windows(stream, length, max(1, (len(stream) - 1) // length))
  say(f"fitting c at length {length} on {windows.size - len(windows)} tokens ({kernel})")

  def loss_at(c):
    beta = rope_scaling.softmax_temperature(c, length, run.train_len)
    return perplexity.evaluate(
        graphdef, run.params, windows, mesh=run.mesh,
        positional=dataclasses.replace(base, temperature=beta),
        batch_size=rows_for(run, length, batch_tokens)).loss

  c, grid = temperature.fit(loss_at, progress=say)
  path = os.path.join(run.workdir, "eval", "temperature.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(run=run.name, step=run.step, c=c, length=length,
                   train_len=run.train_len,
                   grid=[dict(c=x, loss=loss, perplexity=math.exp(loss))
                         for x, loss in grid]), f, indent=1)
  say(f"c = {c:.3f} (beta = {rope_scaling.softmax_temperature(c, length, run.train_len):.4f}"
      f" at {length} tokens); wrote {path}")


def _parse_depths(values) -> list[float]:
  try:
    depths = [float(d) for d in values]
  except ValueError as e:
    raise EvalError(f"--niah_depths={','.join(values)}: use numbers in [0, 1]") from e
  if not depths or not all(0 <= d <= 1 for d in depths):
    raise EvalError(f"--niah_depths={','.join(values)}: use numbers in [0, 1]")
  return depths


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
  _check_choices("evals", _EVALS.value, EVALS)
  _check_choices("niah_variants", _NIAH_VARIANTS.value, needles.VARIANTS)
  depths = _parse_depths(_NIAH_DEPTHS.value)
  if _NONUNIFORMITY_ROWS.value < 1:
    raise EvalError(f"--nonuniformity_rows={_NONUNIFORMITY_ROWS.value}: use a positive "
                    "number of windows")
  say(f"restoring {workdir} (step {_STEP.value if _STEP.value is not None else 'latest'})")
  run = loading.load_run(workdir, _STEP.value)
  # The run's cache (its config's compilation_cache_dir): a rerun skips the compiles.
  try:
    compilation_cache.enable(run.config.get("compilation_cache_dir"), workdir)
  except errors.BadInput as e:  # a path of the machine that trained it: evaluate anyway.
    say(f"compilation cache off: {e}")
  kind = run.positional().kind
  say(f"{run.name} step {run.step}: phase {run.phase}, {KIND_NAMES[kind]}, trained at "
      f"{run.train_len} tokens")
  if _FIT.value:
    stream = heldout.token_stream(run.config, _EVAL_TOKENS.value + 1,
                                  eval_data=_EVAL_DATA.value, text_field=_TEXT_FIELD.value)
    fit_temperature(run, _FIT_LENGTH.value, stream=stream, attention=_ATTENTION.value,
                    batch_tokens=_BATCH_TOKENS.value)
    return
  lengths = lengths_of(run, _LENGTHS.value)
  methods = resolve_methods(run, _METHODS.value, _TEMPERATURE_C.value)
  c = next((f" (c = {m.c:g})" for m in methods if m.name == "temperature"), "")
  say(f"methods: {', '.join(m.name for m in methods)}{c}; lengths: "
      f"{', '.join(map(str, lengths))}")
  if "perplexity" in _EVALS.value:
    stream = heldout.token_stream(run.config, _EVAL_TOKENS.value + 1,
                                  eval_data=_EVAL_DATA.value, text_field=_TEXT_FIELD.value)
    evaluate_perplexity(run, methods, lengths, stream=stream, attention=_ATTENTION.value,
                        batch_tokens=_BATCH_TOKENS.value)
  if "niah" in _EVALS.value or "needle_attention" in _EVALS.value:
    haystack = heldout.text(run.config, 4 * lengths[-1], eval_data=_EVAL_DATA.value,
                            text_field=_TEXT_FIELD.value)
    needle_flags = dict(haystack=haystack, depths=depths, variants=_NIAH_VARIANTS.value,
                        trials=_NIAH_TRIALS.value, seed=_SEED.value,
                        batch_tokens=_BATCH_TOKENS.value)
  if "niah" in _EVALS.value:
    evaluate_niah(run, methods, lengths, **needle_flags)
  if "needle_attention" in _EVALS.value:
    evaluate_needle_attention(run, methods, lengths, attention=_ATTENTION.value,
                              **needle_flags)
  if "nonuniformity_grad" in _EVALS.value:
    evaluate_nonuniformity(run, rows=_NONUNIFORMITY_ROWS.value,
                           eval_data=_EVAL_DATA.value, text_field=_TEXT_FIELD.value)
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
