"""Fits c of the long-context softmax temperature beta = 1 + c ln(s) (s = L / train_len).

A coarse grid over [0, 1] then a fine grid around its best point, minimising held-out
loss at the target length. Each point is one evaluation (and one compilation: beta
is static in the positional mode), so the grid is kept short.
"""

from collections.abc import Callable

import numpy as np


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
