"""The synthetic tasks: documents, answers, token ranges, the data source, the scorer."""

import numpy as np
import pytest
from flax import nnx

from drope_jax.data import pipeline
from drope_jax.data import tasks
from drope_jax.data import tokenizers
from drope_jax.eval import task_scores
from drope_jax.model.positional import Positional
from tests import helpers

BYTE = tokenizers.get_tokenizer("byte")
PARAMS = tasks.Params(pairs=4, span=4, vocab=16, filler_vocab=16)
RANGES = tasks.token_ranges(BYTE, PARAMS)


def _draw(name, index=0, length=128, seed=0, split="eval", params=PARAMS):
  return tasks.draw(name, params, RANGES, length=length, split=split, seed=seed,
                    index=index)


def _solve(tokens: np.ndarray, p: int, name: str, segment: int = 0):
  """An answer from the document alone, by the task's rule: (token, distance)."""
  if name == "copy":
    return tokens[p - segment], segment
  cue = p - 1
  earlier = np.flatnonzero(tokens[:cue] == tokens[cue])
  return tokens[earlier[0] + 1], cue - earlier[0]


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_documents_are_fixed_by_split_seed_length_and_index(name):
  a, b = _draw(name), _draw(name)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.answers, b.answers)
  for other in (_draw(name, index=1), _draw(name, seed=1), _draw(name, split="train")):
    assert not np.array_equal(a.tokens, other.tokens)
  assert a.tokens.dtype == np.int32 and len(a.tokens) == 128


@pytest.mark.parametrize("name", list(tasks.TASKS))
@pytest.mark.parametrize("length", [64, 512])
def test_answers_are_exactly_recoverable_from_the_document(name, length):
  for index in range(20):
    doc = _draw(name, index, length)
    assert len(doc.answers) and len(doc.answers) == len(doc.distances)
    for p, distance in zip(doc.answers, doc.distances):
      token, solved_distance = _solve(doc.tokens, p, name, segment=length // 2)
      assert doc.tokens[p] == token
      assert distance == solved_distance


def test_filler_never_collides_with_keys_or_values():
  filler = set(RANGES.filler)
  assert not filler & set(RANGES.keys) and not filler & set(RANGES.values)
  assert not set(RANGES.keys) & set(RANGES.values)
  for index in range(20):
    doc = _draw("recall", index)
    is_filler = np.isin(doc.tokens, list(filler))
    cued = np.zeros(len(doc.tokens), bool)
    cued[: 2 * PARAMS.pairs] = True
    cued[doc.answers] = cued[doc.answers - 1] = True
    np.testing.assert_array_equal(is_filler, ~cued)  # every other token is filler.
    keys = doc.tokens[: 2 * PARAMS.pairs : 2]
    assert len(set(keys)) == PARAMS.pairs and set(keys) <= set(RANGES.keys)
    # A key appears only as itself and its query: never inside filler.
    for key in keys:
      assert np.sum(doc.tokens == key) <= 2
  for index in range(20):  # induction: each segment token twice, the rest filler.
    doc = _draw("induction", index)
    segment_tokens = doc.tokens[~np.isin(doc.tokens, list(filler))]
    assert set(segment_tokens) <= set(RANGES.values)
    counts = np.unique(segment_tokens, return_counts=True)[1]
    assert list(counts) == [2] * PARAMS.pairs * PARAMS.span


@pytest.mark.parametrize("name", ["recall", "induction"])
def test_distances_cover_the_window_at_every_length(name):
  for length in (128, 512):
    distances = np.concatenate([_draw(name, i, length).distances for i in range(200)])
    assert distances.min() < length // 8
    assert distances.max() > 7 * length // 8
    counts = np.histogram(distances, bins=4, range=(0, length))[0]
    assert counts.min() > 0  # every quarter of the window is asked.


def test_ranges_use_ordinary_ids_of_any_tokenizer_and_refuse_too_many():
  class Tok:  # specials in the middle of the ids, as some BPE vocabularies have.
    spec, vocab_size, bos_id, eos_id, pad_id = "t", 500, 100, 101, 101
  ranges = tasks.token_ranges(Tok, tasks.Params(vocab=100, filler_vocab=150))
  used = set(ranges.keys) | set(ranges.values) | set(ranges.filler)
  assert len(used) == 350 and not used & {100, 101}
  with pytest.raises(tasks.TaskError, match="task.vocab"):
    tasks.token_ranges(BYTE, tasks.Params(vocab=100, filler_vocab=100))


@pytest.mark.parametrize("params, message", [
    (tasks.Params(pairs=40, vocab=16), "task.pairs=40"),
    (tasks.Params(loss="some"), "task.loss"),
    (tasks.Params(copy_fraction=0.9), "task.copy_fraction"),
    (tasks.Params(pairs=4, span=8, vocab=16), "task.pairs=4 segments"),
])
def test_bad_settings_are_refused_with_the_key(params, message):
  name = ("copy" if "copy" in message else "induction" if "segments" in message
          else "recall")
  with pytest.raises(tasks.TaskError, match=message):
    tasks.check(name, params, 64)


def _data_config(source, loss="answers"):
  config = helpers.tiny_config().data
  config.source = source
  config.task.update(dict(pairs=4, span=4, vocab=16, filler_vocab=16, loss=loss))
  if "stdlib" in source:
    config.packing = "first_fit"
  return config


def test_loss_only_on_answers_or_on_everything():
  batch = next(pipeline.make_iterator(_data_config("recall"), seq_len=64, batch_size=4,
                                      seed=0))
  # Each row is one document (64 tokens + EOS): the weights are its answers.
  for row in range(4):
    targets = batch["targets"][row]
    answers = np.flatnonzero(batch["weights"][row]) + 1
    assert len(answers) == PARAMS.pairs
    for p in answers:
      assert targets[p - 1] == _solve(batch["inputs"][row], p, "recall")[0]
  everything = next(pipeline.make_iterator(_data_config("recall", loss="all"),
                                           seq_len=64, batch_size=4, seed=0))
  assert everything["weights"].sum() == 4 * 64
  np.testing.assert_array_equal(everything["inputs"], batch["inputs"])


def test_a_task_mixes_with_prose():
  config = _data_config("stdlib,induction")
  config.weights = "1,1"
  batch = next(pipeline.make_iterator(config, seq_len=64, batch_size=8, seed=0))
  used = set(RANGES.keys) | set(RANGES.values) | set(RANGES.filler) | {BYTE.eos_id}
  is_task_row = [set(row.tolist()) <= used for row in batch["inputs"]]
  assert any(is_task_row) and not all(is_task_row)
  for row, task_row in zip(range(8), is_task_row):
    weights = batch["weights"][row]
    if not task_row:  # prose trains on every real token.
      assert weights.sum() > 0.5 * 64


class _Oracle:
  """Predicts every next token by the tasks' rule: what followed the last earlier
  occurrence of this token (recall, induction), or the token half a document back."""

  def __init__(self, name):
    self.name = name

  def __call__(self, params, tokens_BT):
    predicted = np.zeros_like(tokens_BT)
    for b, tokens in enumerate(tokens_BT):
      for p in range(len(tokens) - 1):
        if self.name == "copy":
          predicted[b, p] = tokens[p + 1 - len(tokens) // 2]
        else:
          earlier = np.flatnonzero(tokens[:p] == tokens[p])
          predicted[b, p] = tokens[earlier[-1] + 1] if len(earlier) else 0
    return predicted, np.zeros(tokens_BT.shape, np.float32)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_a_perfect_model_scores_one_and_buckets_add_up(name):
  documents = tasks.documents(name, PARAMS, BYTE, length=96, seed=3, count=10)
  scores = task_scores.score(_Oracle(name), None, documents, mesh=helpers.mesh(),
                             batch_size=4)
  assert scores.accuracy == 1.0 and scores.loss == 0.0
  buckets = scores.by_distance([0, 24, 48, 72, 97])
  assert sum(b["answers"] for b in buckets) == len(scores.correct)


def test_a_random_model_scores_chance():
  config = helpers.tiny_config("rope", vocab_size=264)
  graphdef, params = nnx.split(helpers.build_model(config.model), nnx.Param)
  documents = tasks.documents("recall", PARAMS, BYTE, length=64, seed=0, count=16)
  predict_fn = task_scores.make_predict_fn(graphdef, Positional(kind="rope", theta=1e4))
  scores = task_scores.score(predict_fn, params, documents, mesh=helpers.mesh(),
                             batch_size=8)
  # Chance: 1 of the 264 ids; the 16 values would be 1/16.
  assert scores.accuracy < 1 / 16
  assert abs(scores.loss - np.log(264)) < 0.5  # near-uniform predictions.
