"""What every task makes: a document, and the token ranges it draws from."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenRanges:
  """Disjoint id ranges: a filler token is never mistaken for a key or a value."""
  keys: range
  values: range
  filler: range


@dataclasses.dataclass(frozen=True)
class Document:
  tokens: np.ndarray     # [T] int32.
  answers: np.ndarray    # [A] positions p whose token follows from tokens[:p].
  distances: np.ndarray  # [A] tokens between where an answer's cue was written and
                         #     where it is asked (a key's pair to its query, ...).

  def answer_mask(self) -> np.ndarray:
    mask = np.zeros(len(self.tokens), bool)
    mask[self.answers] = True
    return mask


def draw_tokens(rng: np.random.Generator, ids: range, size, *, distinct=False):
  return np.asarray(ids.start + rng.choice(len(ids), size, replace=not distinct),
                    np.int32)


def slots(rng: np.random.Generator, count: int, start: int, stop: int,
          width: int = 2) -> np.ndarray:
  """`count` sorted, non-overlapping slots [s, s + width) in [start, stop), spread
  uniformly: the gaps between them are a random composition of the free tokens."""
  free = stop - start - count * width
  cuts = np.sort(rng.choice(free + count, count, replace=False))
  return start + cuts + width * np.arange(count) - np.arange(count)
