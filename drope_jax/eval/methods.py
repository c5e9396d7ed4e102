"""What a checkpoint is evaluated with, at which lengths, kernels and batch sizes.

A RoPE checkpoint is evaluated as is ('rope') and with the RoPE scalings pi, ntk, yarn,
dynamic_ntk (factor = the length multiple); a NoPE checkpoint as is ('nope') and with
the softmax temperature beta = 1 + c ln(s) ('temperature').
"""

import dataclasses
import json
import os
from collections.abc import Callable

import jax

from drope_jax.eval import loading
from drope_jax.eval.errors import EvalError
from drope_jax.model import kernels
from drope_jax.model import rope_scaling
from drope_jax.model.positional import Positional

# --methods names per checkpoint kind; 'none' is the checkpoint as is.
METHODS = {"rope": ("none", "pi", "ntk", "yarn", "dynamic_ntk"),
           "nope": ("none", "temperature")}
KIND_NAMES = {"rope": "RoPE", "nope": "NoPE"}


@dataclasses.dataclass(frozen=True)
class Method:
  name: str          # rope | pi | ntk | yarn | dynamic_ntk | nope | temperature.
  base: Positional   # the checkpoint's own positional mode.
  c: float | None = None

  def positional(self, length: int, train_len: int) -> Positional:
    s = length / train_len
    if self.name in ("rope", "nope") or s <= 1:
      return self.base  # every scaling and temperature is the identity at factor 1.
    if self.name == "temperature":
      beta = rope_scaling.softmax_temperature(self.c, length, train_len)
      return dataclasses.replace(self.base, temperature=beta)
    return dataclasses.replace(self.base, scaling=self.name, factor=s,
                               original_max_len=train_len)

  def record(self) -> dict:
    extra = {"temperature_c": self.c} if self.name == "temperature" else {}
    return {"method": self.name, "positional": self.base.kind, **extra}


def resolve_methods(run: loading.Run, requested, c: float | None, *,
                    say: Callable[[str], None] = print) -> list[Method]:
  """--methods (auto or names) as the Methods this checkpoint can be evaluated with."""
  base = run.positional()
  allowed = METHODS[base.kind]
  what = f"{run.name} step {run.step} is a {KIND_NAMES[base.kind]} checkpoint"
  if base.scaling != "none":  # its own RoPE scaling (an imported Llama 3.x, ...).
    allowed = ("none",)
    what += (f" with its own RoPE scaling ({base.scaling}), which evaluation-time "
             "scalings would replace")
  if c is None and "temperature" in allowed:
    c = saved_c(run)
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


def saved_c(run: loading.Run) -> float | None:
  """The c of a previous --fit_temperature (eval/temperature.json), if any."""
  path = os.path.join(run.workdir, "eval", "temperature.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return float(json.load(f)["c"])


def lengths_of(run: loading.Run, multiples) -> list[int]:
  """--lengths (multiples of train.seq_len) in tokens, sorted and distinct."""
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
  """Rows of a batch of `length` tokens: about batch_tokens, a multiple of the mesh's."""
  multiple = loading.batch_multiple(run.mesh)
  rows = max(1, batch_tokens // length)
  return -(-rows // multiple) * multiple
