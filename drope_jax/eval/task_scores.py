"""Accuracy of a model on synthetic task documents (drope_jax/data/tasks).

    predict_fn = task_scores.make_predict_fn(graphdef, positional)
    scores = task_scores.score(predict_fn, params, documents, mesh=mesh, batch_size=8)
    scores.accuracy, scores.by_distance(edges)

One forward pass per document, teacher-forced: an answer counts as correct when the
model's most likely next token (argmax over the whole vocabulary) at the position
before it is the answer. This is the score Zoology reports for MQAR, and what greedy
decoding of each answer given the true prefix would produce.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from drope_jax import parallel
from drope_jax.data.tasks import Document
from drope_jax.model.positional import Positional


@dataclasses.dataclass(frozen=True)
class Scores:
  correct: np.ndarray    # [A] bool, every answer of every document, in order.
  distances: np.ndarray  # [A] the answer's distance (drope_jax/data/tasks/document.py).
  losses: np.ndarray     # [A] cross-entropy of each answer, nats.

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct)) if len(self.correct) else float("nan")

  @property
  def loss(self) -> float:
    """Mean cross-entropy of the answers: what the softmax temperature is fitted on."""
    return float(np.mean(self.losses)) if len(self.losses) else float("nan")

  def by_distance(self, edges: Sequence[int]) -> list[dict]:
    """Answers and accuracy per distance bucket [edges[i], edges[i+1]); empty buckets
    have accuracy None. The answers add up to all answers when the edges span them."""
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
      inside = (self.distances >= lo) & (self.distances < hi)
      count = int(inside.sum())
      buckets.append(dict(lo=int(lo), hi=int(hi), answers=count,
                          accuracy=float(self.correct[inside].mean()) if count else None))
    return buckets


def make_predict_fn(graphdef, positional: Positional):
  """A jitted (params, tokens_BT, temperature=None) -> (the argmax next token [B, T],
  the cross-entropy of each actual next token [B, T]; the last position's is 0). A
  `temperature` (a scalar array) replaces the positional mode's beta in one program."""
  def predict(params, tokens_BT, temperature=None):
    logits_BTV = nnx.merge(graphdef, params)(
        tokens_BT, positional=positional.with_temperature(temperature))
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BTV[:, :-1], tokens_BT[:, 1:])
    return (jnp.argmax(logits_BTV, axis=-1).astype(jnp.int32),
            jnp.pad(losses_BT, ((0, 0), (0, 1))))

  return jax.jit(predict)


def score(predict_fn, params, documents: Sequence[Document], *, mesh,
          batch_size: int) -> Scores:
  """Scores `documents` (all of one length) with a `make_predict_fn` function, in
  batches of `batch_size` rows; the last batch is padded with copies so every batch has
  one shape (one compilation)."""
  tokens_NT = np.stack([d.tokens for d in documents])
  correct, distances, losses = [], [], []
  with parallel.mesh_context(mesh):
    for start in range(0, len(documents), batch_size):
      rows = tokens_NT[start:start + batch_size]
      padded = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), 0)])
      predicted_BT, losses_BT = jax.device_get(predict_fn(params, padded))
      for doc, predicted_T, losses_T in zip(documents[start:start + batch_size],
                                            np.asarray(predicted_BT),
                                            np.asarray(losses_BT)):
        # What the model makes of position p - 1 is its guess for token p.
        correct.append(predicted_T[doc.answers - 1] == doc.tokens[doc.answers])
        losses.append(losses_T[doc.answers - 1])
        distances.append(doc.distances)
  return Scores(*(np.concatenate(x) for x in (correct, distances, losses)))
