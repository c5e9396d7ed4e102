"""Synthetic retrieval tasks: one definition for training documents and evaluation.

A task draws a `Document` of any length from a seeded generator: token ids, the
positions whose token is determined by what came before (the answers), and for each
answer how far back the information it needs sits (its distance). Training reads
documents through `TaskSource` (`data.source=recall`, mixable with prose); evaluation
(drope_jax/eval/tasks.py) draws fresh ones at longer lengths and scores the model's
greedy next-token prediction at the answers. One file per task:

  recall      multi-query associative recall (Zoology's MQAR): key-value pairs first,
              then queries spread over the whole window.
  copy        a random segment, repeated once (its offset grows with the length).
  induction   random segments, each repeated once at a random offset: every token of
              a repeat is "what followed the previous token's earlier occurrence".

Token ids: tasks use the tokenizer's own ordinary ids as they are (no reserved ids):
the longest run of ids that are not BOS / EOS / PAD, cut into three disjoint ranges,
keys, values and filler (`token_ranges`). With the byte tokenizer these are byte
values; with a BPE tokenizer, arbitrary pieces. Filler never equals a key or value, so
an answer is exactly recoverable from the document.
"""

import dataclasses
import types

import numpy as np

from drope_jax import errors
from drope_jax.data.tasks import copy
from drope_jax.data.tasks import induction
from drope_jax.data.tasks import recall
from drope_jax.data.tasks.document import Document
from drope_jax.data.tasks.document import TokenRanges

TASKS: dict[str, types.ModuleType] = {m.NAME: m for m in (recall, copy, induction)}
LOSSES = ("answers", "all")
# Streams of documents: the training split's, the one evaluation scores, and the one
# the NoPE softmax temperature is fitted on (never the scored documents).
STREAMS = {"train": 0, "eval": 1, "fit": 2}

__all__ = ["Document", "TokenRanges", "TASKS", "Params", "TaskSource", "draw",
           "documents", "token_ranges"]


class TaskError(errors.BadInput, ValueError):
  """Task settings that cannot make a document; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Params:
  """The `task` section of a run's config (drope_jax/config.py documents each)."""
  pairs: int = 4
  queries: int = 0
  span: int = 8
  vocab: int = 64
  filler_vocab: int = 64
  copy_fraction: float = 0.5
  loss: str = "answers"
  docs: int = 100_000

  @classmethod
  def from_config(cls, task_config) -> "Params":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(task_config).items() if k in fields})


def token_ranges(tokenizer, params: Params) -> TokenRanges:
  """Keys, values, filler: consecutive ranges in the tokenizer's longest run of
  ordinary ids."""
  special = sorted({tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id})
  bounds = [-1, *special, tokenizer.vocab_size]
  start, stop = max(((lo + 1, hi) for lo, hi in zip(bounds[:-1], bounds[1:])),
                    key=lambda r: r[1] - r[0])
  needed = 2 * params.vocab + params.filler_vocab
  if needed > stop - start:
    raise TaskError(
        f"task.vocab={params.vocab} (keys and values) + task.filler_vocab="
        f"{params.filler_vocab} need {needed} token ids, but tokenizer "
        f"{tokenizer.spec!r} has {stop - start} ordinary ids in a row: lower them")
  keys = range(start, start + params.vocab)
  values = range(keys.stop, keys.stop + params.vocab)
  return TokenRanges(keys, values, range(values.stop, values.stop + params.filler_vocab))


def check(name: str, params: Params, length: int) -> None:
  """TaskError unless task `name` can make documents of `length` tokens."""
  if name not in TASKS:
    raise TaskError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
  if params.loss not in LOSSES:
    raise TaskError(f"task.loss={params.loss!r}: use one of {', '.join(LOSSES)}")
  for key in ("pairs", "span", "vocab", "filler_vocab", "docs"):
    if getattr(params, key) < 1:
      raise TaskError(f"task.{key}={getattr(params, key)} must be positive")
  if params.queries < 0:
    raise TaskError(f"task.queries={params.queries} must be >= 0 (0: one per pair)")
  problem = TASKS[name].problem(params, length)
  if problem:
    raise TaskError(f"task {name} at {length} tokens: {problem}")


def draw(name: str, params: Params, ranges: TokenRanges, *, length: int, split: str,
         seed: int, index: int) -> Document:
  """Document `index` of the (`split`, `seed`) stream at `length` tokens: fixed by
  these alone, so every run and every rerun sees the same documents."""
  rng = np.random.default_rng([STREAMS[split], seed, length, index])
  return TASKS[name].make(length, ranges, params, rng)


def documents(name: str, params: Params, tokenizer, *, length: int, seed: int,
              count: int, split: str = "eval") -> list[Document]:
  """The first `count` documents of the (`split`, `seed`) stream at `length` tokens."""
  ranges = token_ranges(tokenizer, params)
  return [draw(name, params, ranges, length=length, split=split, seed=seed, index=i)
          for i in range(count)]


class TaskSource:
  """A grain data source of `params.docs` task documents of `length` tokens.

  Items are {"tokens": int32 [length], "loss_mask": bool [length]}: loss_mask marks
  the tokens that count as targets (the answers, or all with task.loss=all).
  """

  def __init__(self, name: str, tokenizer, params: Params, *, length: int, split: str,
               seed: int = 0):
    check(name, params, length)
    self._name, self._params, self._length = name, params, length
    self._ranges = token_ranges(tokenizer, params)
    self._split, self._seed = split, seed

  def __len__(self) -> int:
    return self._params.docs

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    doc = draw(self._name, self._params, self._ranges, length=self._length,
               split=self._split, seed=self._seed, index=index)
    mask = doc.answer_mask() if self._params.loss == "answers" else np.ones(
        self._length, bool)
    return {"tokens": doc.tokens, "loss_mask": mask}

  def __repr__(self) -> str:
    return (f"TaskSource({self._name}: {len(self)} documents of {self._length} tokens, "
            f"{self._split})")
