"""Fits c of the long-context softmax temperature beta = 1 + c ln(s) (s = L / train_len).

A coarse grid over [0, 1] then a fine grid around its best point, minimising held-out
loss at the target length. Each point is one evaluation of one compiled program (beta
is passed to it as an argument). `fit_and_write` is
`evaluate --fit_temperature`: it fits a NoPE checkpoint's c into W/eval/temperature.json,
where methods.saved_c finds it for the 'temperature' method. A run trained on one
synthetic task alone has no prose: its c minimises the loss of task answers instead.
"""

import functools
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from drope_jax.data import framing
from drope_jax.data import pipeline
from drope_jax.data import tasks
from drope_jax.eval import api
from drope_jax.eval import heldout
from drope_jax.eval import loading
from drope_jax.eval import methods
from drope_jax.eval import perplexity
from drope_jax.eval import results
from drope_jax.eval import task_scores
from drope_jax.eval.errors import EvalError
from drope_jax.model import rope_scaling


def fit(loss_at: Callable[[float], float], *, low: float = 0.0, high: float = 1.0,
        coarse_step: float = 0.1, fine_step: float = 0.02,
        progress: Callable[[str], None] | None = None) -> tuple[float, list[tuple[float, float]]]:
  """Returns (best c, [(c, loss)] for every c tried, sorted by c)."""
  losses = {}

  def visit(grid):
    for c in grid:
      c = round(float(c), 6)
      if c not in losses:
        losses[c] = float(loss_at(c))
        if progress:
          progress(f"  c={c:.3f}: loss {losses[c]:.4f} (perplexity {np.exp(losses[c]):.3f})")

  visit(np.arange(low, high + coarse_step / 2, coarse_step))
  best = min(losses, key=losses.get)
  visit(np.arange(max(low, best - coarse_step), min(high, best + coarse_step) + fine_step / 2,
                  fine_step))
  best = min(losses, key=losses.get)
  return best, sorted(losses.items())


def fit_and_write(run: loading.Run, multiple: float, options: api.Options,
                  say: Callable[[str], None]) -> None:
  """Fits c at `multiple` x train.seq_len on held-out data of the run's own kind: the
  held-out tokens perplexity scores, or, for a run trained on a synthetic task alone,
  the answers of fresh task documents from the fit stream (never the evaluated ones)."""
  task = None if options.eval_data else _only_task(run)
  stream = None if task else api.read_heldout_tokens(run, options)
  base = run.positional()
  if base.kind != "nope":
    raise EvalError(f"{run.name} step {run.step} is a RoPE checkpoint: the softmax "
                    "temperature is fitted for NoPE / DroPE (recalibrated) checkpoints")
  length = methods.lengths_of(run, [str(multiple)])[0]
  if length <= run.train_len:
    raise EvalError(f"--length={multiple}: fit the temperature beyond the training "
                    "length (a multiple > 1)")
  kernel = methods.attention_for(run.config.model.attention, length, options.attention)
  graphdef = run.graphdef(kernel)
  batch_size = methods.rows_for(run, length, options.batch_tokens)
  if task:
    documents = tasks.documents(task, tasks.Params.from_config(run.config.data.task),
                                run.tokenizer(), length=length, seed=options.seed,
                                count=options.task_docs, split="fit")
    say(f"fitting c at length {length} on the answers of {len(documents)} {task} "
        f"documents ({kernel})")
  else:
    windows = heldout.windows(stream, length, max(1, (len(stream) - 1) // length),
                              framing.window_prefix(run.framing, run.tokenizer()))
    say(f"fitting c at length {length} on {windows.size - len(windows)} tokens ({kernel})")

  # One program for the whole grid: beta is an argument, not part of the static mode.
  predict_fn = task_scores.make_predict_fn(graphdef, base)
  loss_fn = perplexity.make_loss_fn(graphdef, base)

  def loss_at(c):
    beta = jnp.float32(rope_scaling.softmax_temperature(c, length, run.train_len))
    if task:
      return task_scores.score(functools.partial(predict_fn, temperature=beta),
                               run.params, documents, mesh=run.mesh,
                               batch_size=batch_size).loss
    return perplexity.evaluate(graphdef, run.params, windows, mesh=run.mesh,
                               positional=base, batch_size=batch_size,
                               loss_fn=functools.partial(loss_fn, temperature=beta)).loss

  c, grid = fit(loss_at, progress=say)
  path = results.write_record(run, "temperature", dict(
      run=run.name, step=run.step, c=c, length=length, train_len=run.train_len,
      fitted_on=f"{task} answers (fit stream, seed {options.seed})" if task
      else "held-out tokens",
      grid=[dict(c=x, loss=loss, perplexity=math.exp(loss)) for x, loss in grid]))
  beta = rope_scaling.softmax_temperature(c, length, run.train_len)
  say(f"c = {c:.3f} (beta = {beta:.4f} at {length} tokens); wrote {path}")


def _only_task(run: loading.Run) -> str | None:
  """The synthetic task a run trained on, when it trained on nothing else."""
  names = pipeline.component_names(run.config.data)
  if len(names) == 1 and names[0] in tasks.TASKS:
    return names[0]
  return None
