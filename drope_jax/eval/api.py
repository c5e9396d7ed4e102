"""The interface of an evaluation: `python -m drope_jax.evaluate --evals=<name>`.

An evaluation is an object with a `name` (its --evals name) and `run(ctx)`, which
evaluates ctx.run with every method of ctx.methods at every length of ctx.lengths and
writes W/eval/<name>_<method>.json with results.write (results.write_record for one
file of no method, as nonuniformity_grad). Its module goes in eval/evaluations/, its
line in eval/registry.py. Held-out text that several evaluations read is read once, on
first use.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Protocol

import numpy as np

from drope_jax.eval import heldout
from drope_jax.eval import loading
from drope_jax.eval import methods as methods_lib


@dataclasses.dataclass(frozen=True)
class Options:
  """The evaluation flags' values, as evaluate.py parses them."""
  eval_data: str | None            # held-out text files instead of the run's eval split.
  text_field: str                  # their JSON field / column of text.
  eval_tokens: int                 # held-out tokens scored at every length.
  batch_tokens: int                # tokens per forward pass.
  niah_trials: int                 # prompts per NIAH cell.
  niah_depths: tuple[float, ...]   # needle depths in [0, 1].
  niah_variants: tuple[str, ...]   # needles.VARIANTS.
  attention: str | None            # the attention kernel; None: methods.attention_for.
  seed: int                        # seed of the NIAH prompts and task documents.
  nonuniformity_rows: int          # nonuniformity_grad: windows of train.seq_len.
  task_docs: int                   # synthetic tasks: documents per length.


@dataclasses.dataclass(frozen=True)
class Context:
  """One evaluate invocation: the checkpoint, what to evaluate it with, the flags."""
  run: loading.Run
  methods: tuple[methods_lib.Method, ...]
  lengths: tuple[int, ...]
  options: Options
  say: Callable[[str], None]

  @functools.cached_property
  def heldout_tokens(self) -> np.ndarray:
    """The --eval_tokens held-out tokens (and one more target) every length scores."""
    return read_heldout_tokens(self.run, self.options)

  @functools.cached_property
  def haystack(self) -> str:
    """Held-out prose the needle prompts are cut from, enough for the longest length."""
    return heldout.text(self.run.config, 4 * self.lengths[-1],
                        eval_data=self.options.eval_data,
                        text_field=self.options.text_field)


class Evaluation(Protocol):
  name: str  # the --evals name.

  def run(self, ctx: Context) -> None:
    """Computes and writes eval/<name>_<method>.json (via results.write)."""


def read_heldout_tokens(run: loading.Run, options: Options) -> np.ndarray:
  """Context.heldout_tokens, for the temperature fit (which has no Context)."""
  return heldout.token_stream(run.config, options.eval_tokens + 1,
                              eval_data=options.eval_data, text_field=options.text_field)
