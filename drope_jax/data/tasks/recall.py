"""Multi-query associative recall (Zoology's MQAR).

    k1 v1 k2 v2 ... kN vN  f f k2 v2 f f f k1 v1 f ...
    \\---- the pairs ----/  \\-- queries at random positions, filler between --/

Keys are distinct; a query repeats a key and the answer is its value. Query slots
are spread uniformly over the rest of the window, so key-to-query distances cover
the whole window at any length (the same N pairs at 4x sit up to 4x farther back).
"""

import numpy as np

from drope_jax.data.tasks.document import Document, draw_tokens, slots

NAME = "recall"


def _queries(params) -> int:
  return params.queries or params.pairs


def problem(params, length: int) -> str | None:
  if params.pairs > params.vocab:
    return f"task.pairs={params.pairs} distinct keys need task.vocab >= {params.pairs}"
  if _queries(params) > params.pairs:
    return f"task.queries={params.queries} asks more keys than task.pairs={params.pairs}"
  if 2 * params.pairs + 2 * _queries(params) > length:
    return (f"{params.pairs} pairs and {_queries(params)} queries need "
            f"{2 * params.pairs + 2 * _queries(params)} tokens")
  return None


def make(length: int, ranges, params, rng: np.random.Generator) -> Document:
  n, q = params.pairs, _queries(params)
  keys = draw_tokens(rng, ranges.keys, n, distinct=True)
  values = draw_tokens(rng, ranges.values, n)
  tokens = draw_tokens(rng, ranges.filler, length)
  tokens[0:2 * n:2], tokens[1:2 * n:2] = keys, values
  starts = slots(rng, q, 2 * n, length)
  asked = rng.choice(n, q, replace=False)
  tokens[starts], tokens[starts + 1] = keys[asked], values[asked]
  return Document(tokens, answers=starts + 1, distances=starts - 2 * asked)
