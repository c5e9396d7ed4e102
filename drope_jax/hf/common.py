"""What every drope_jax.hf module shares: the error type and the lazy tensor."""

import dataclasses
from typing import Callable

import numpy as np


class HFError(ValueError):
  """Input that cannot be imported or exported; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """A tensor whose shape is known now and whose values are read on `load()`."""
  shape: tuple[int, ...]
  dtype: np.dtype
  load: Callable[[], np.ndarray]
