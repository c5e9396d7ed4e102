"""Induction with variable offsets (Olsson et al.'s repeated random tokens).

    f f a b c d e f f f f f ... f a [b c d e] f f ...

`task.pairs` random segments of `task.span` distinct value tokens each appear twice,
at random places in filler: every token of a repeat after its first is "the token
that followed the earlier occurrence of the previous token". That needs a
previous-token step (where positions help) and content matching (where they need
not); the offset between the two occurrences is random, so unlike `copy` no fixed
"look S back" solves it, and the distances cover the window at any length. Value
tokens are distinct within a document and never filler, so each answer has exactly
one source.
"""

import numpy as np

from drope_jax.data.tasks.document import Document, draw_tokens, slots

NAME = "induction"


def problem(params, length: int) -> str | None:
  if params.span < 2:
    return f"task.span={params.span}: a repeated segment needs at least 2 tokens"
  if params.pairs * params.span > params.vocab:
    return (f"task.pairs={params.pairs} segments of task.span={params.span} distinct "
            f"tokens need task.vocab >= {params.pairs * params.span}")
  if 2 * params.pairs * params.span > length:
    return f"{params.pairs} segments of {params.span} twice need {2 * params.pairs * params.span} tokens"
  return None


def make(length: int, ranges, params, rng: np.random.Generator) -> Document:
  n, span = params.pairs, params.span
  segments = draw_tokens(rng, ranges.values, (n, span), distinct=True)
  tokens = draw_tokens(rng, ranges.filler, length)
  starts = slots(rng, 2 * n, 0, length, width=span)
  owner = rng.permutation(np.repeat(np.arange(n), 2))  # every segment twice.
  first, answers, distances = {}, [], []
  for start, i in zip(starts, owner):
    tokens[start:start + span] = segments[i]
    if i in first:
      answers.extend(range(start + 1, start + span))
      distances.extend([start - first[i]] * (span - 1))
    else:
      first[i] = start
  return Document(tokens, answers=np.asarray(answers), distances=np.asarray(distances))
