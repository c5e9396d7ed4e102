"""Copy: a random segment, repeated once.

    [filler ...] s1 s2 ... sS s1 s2 ... sS

The segment is `task.copy_fraction` of the document, so its offset grows with the
length: at 1x a model can learn "look S back", which no longer holds at 2x. The
answers are the repeat's tokens after its first (the first cannot be known to start).
"""

import numpy as np

from drope_jax.data.tasks.document import Document, draw_tokens

NAME = "copy"


def _segment(params, length: int) -> int:
  return int(params.copy_fraction * length)


def problem(params, length: int) -> str | None:
  if not 0 < params.copy_fraction <= 0.5:
    return f"task.copy_fraction={params.copy_fraction} must lie in (0, 0.5]"
  if _segment(params, length) < 2:
    return "the segment would be shorter than 2 tokens: raise task.copy_fraction"
  return None


def make(length: int, ranges, params, rng: np.random.Generator) -> Document:
  size = _segment(params, length)
  segment = draw_tokens(rng, ranges.values, size)
  start = length - 2 * size
  tokens = np.concatenate([draw_tokens(rng, ranges.filler, start), segment, segment])
  answers = np.arange(start + size + 1, length)
  return Document(tokens, answers=answers, distances=np.full(len(answers), size))
