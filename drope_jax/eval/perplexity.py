"""Perplexity against context length, with the mean loss per position bucket.

    result = perplexity.evaluate(graphdef, params, windows_NL1, positional=..., mesh=...)

`windows_NL1` holds N windows of L + 1 contiguous held-out tokens (inputs are the first
L, targets the last L). The loss by position is what shows a RoPE model breaking past
its training length while its early positions stay fine.
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from drope_jax import parallel
from drope_jax import train_step
from drope_jax.model.positional import Positional


@dataclasses.dataclass(frozen=True)
class Result:
  length: int
  tokens: int              # tokens scored.
  loss: float              # mean cross-entropy, nats.
  loss_by_position: np.ndarray  # [L] mean loss at each position.

  @property
  def perplexity(self) -> float:
    return float(np.exp(self.loss))

  def bucket_losses(self, edges) -> list[float | None]:
    """Mean loss in [edges[i], edges[i+1]); None for buckets at or past the length."""
    return [float(np.mean(self.loss_by_position[lo:hi])) if lo < self.length else None
            for lo, hi in zip(edges[:-1], edges[1:])]


# Positions whose logits exist at once: a long window's [B, S, V] float32 logits (8K
# positions of a 49K vocabulary: 1.6 GB) would be the largest array of the pass.
LOSS_CHUNK = 512


def make_loss_fn(graphdef, positional: Positional):
  """A jitted (params, inputs_BS, targets_BS, row_weights_B, temperature=None) -> summed
  loss per position [S]. A `temperature` (a scalar array) replaces the positional
  mode's beta without a new program: the temperature fit tries its grid on one."""
  def position_loss_sums(params, inputs_BS, targets_BS, row_weights_B, temperature=None):
    model = nnx.merge(graphdef, params)
    x_BSE = model.hidden(inputs_BS, positional=positional.with_temperature(temperature))
    losses_BS = train_step.position_losses(model.logits, x_BSE, targets_BS, LOSS_CHUNK)
    return jnp.sum(losses_BS * row_weights_B[:, None], axis=0)

  return jax.jit(position_loss_sums)


def batches(windows_NL1: np.ndarray, batch_size: int):
  """(inputs, targets, row weights) of `batch_size` rows; the last is padded with
  zero-weight copies so every batch has one shape (one compilation)."""
  for start in range(0, len(windows_NL1), batch_size):
    rows = windows_NL1[start:start + batch_size]
    weights = np.ones(batch_size, np.float32)
    if len(rows) < batch_size:
      weights[len(rows):] = 0
      rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), 0)])
    yield rows[:, :-1], rows[:, 1:], weights


def evaluate(graphdef, params, windows_NL1: np.ndarray, *, positional: Positional,
             mesh, batch_size: int,
             progress: Callable[[str], None] | None = None, loss_fn=None) -> Result:
  """Mean loss of the model over all windows, and by position (with `loss_fn`, a
  `make_loss_fn` function, when given: its program is reused)."""
  loss_fn = loss_fn or make_loss_fn(graphdef, positional)
  length = windows_NL1.shape[1] - 1
  sums_S = np.zeros(length, np.float64)
  started = time.perf_counter()
  with parallel.mesh_context(mesh):
    for i, (inputs, targets, weights) in enumerate(batches(windows_NL1, batch_size)):
      sums_S += np.asarray(jax.device_get(loss_fn(params, inputs, targets, weights)))
      if progress and (i + 1) % 10 == 0:
        progress(f"  {(i + 1) * batch_size}/{len(windows_NL1)} windows of {length} "
                 f"({time.perf_counter() - started:.0f}s)")
  count = len(windows_NL1)
  by_position = sums_S / count
  return Result(length=length, tokens=count * length, loss=float(by_position.mean()),
                loss_by_position=by_position)


def bucket_edges(train_len: int, max_len: int, per_train_len: int = 4) -> list[int]:
  """Edges every train_len / per_train_len tokens, from 0 to max_len."""
  width = max(1, train_len // per_train_len)
  edges = list(range(0, max_len, width))
  return edges + [max_len]
