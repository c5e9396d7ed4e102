"""Needle-in-a-haystack prompts: placement, length, determinism, scoring."""

import re

import numpy as np
import pytest

from drope_jax.data import needles as niah
from drope_jax.data import tokenizers
from drope_jax.eval import niah_runner

NEEDLE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")


def prose(num_sentences=400, seed=0):
  """Sentences of 4 to 20 words, in paragraphs, like held-out text."""
  rng = np.random.default_rng(seed)
  words = ("the river ran past an old mill where farmers brought grain every "
           "autumn and children watched the wheel turn slowly").split()
  sentences = [" ".join(rng.choice(words, rng.integers(4, 21))).capitalize() + "."
               for _ in range(num_sentences)]
  return "\n\n".join(" ".join(sentences[i:i + 5]) for i in range(0, num_sentences, 5))


def count_bytes(text):
  return len(text.encode())


def count_words(text):
  return len(text.split())


def make(variant="single", depth=0.5, target=4000, seed=0, count=count_bytes, haystack=None):
  return niah.make_example(
      niah.Haystack(prose() if haystack is None else haystack), variant=variant,
      target_tokens=target, depth=depth, rng=np.random.default_rng(seed),
      count_tokens=count)


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
def test_single_needle_sits_at_the_asked_depth(depth):
  example = make(depth=depth, target=8000)
  (offset,) = example.needle_char_offsets
  needle = NEEDLE.match(example.prompt, offset)
  assert needle and needle.group(2) == example.answers[0]
  assert len(NEEDLE.findall(example.prompt)) == 1
  context_start = len(niah.PREAMBLE)
  context_end = example.prompt.index("\n\nWhat are all the special magic numbers")
  context_chars = context_end - context_start - len(needle.group(0)) - 1
  # Within half a sentence (at most ~130 characters here) of the asked depth.
  assert abs((offset - context_start) / context_chars - depth) < 0.02


@pytest.mark.parametrize("count", [count_bytes, count_words])
@pytest.mark.parametrize("variant", niah.VARIANTS)
@pytest.mark.parametrize("target", [1000, 3000, 20000])
def test_prompt_length_is_close_to_target(variant, target, count):
  if count is count_words:
    target //= 5
  example = make(variant=variant, target=target, count=count)
  longest_sentence = 130 if count is count_bytes else 20
  assert target - longest_sentence <= count(example.prompt) <= target


def test_haystack_shorter_than_target_wraps_around():
  haystack = prose(num_sentences=10)
  example = make(target=10 * len(haystack), haystack=haystack)
  assert len(example.prompt) > 8 * len(haystack)


def test_same_seed_same_example_other_seed_other_example():
  assert make(variant="multiquery", seed=3) == make(variant="multiquery", seed=3)
  assert make(variant="multiquery", seed=3) != make(variant="multiquery", seed=4)


def test_multikey_has_distinct_keys_and_asks_one():
  for seed in range(20):
    example = make(variant="multikey", seed=seed)
    needles = [NEEDLE.match(example.prompt, o).groups()
               for o in example.needle_char_offsets]
    keys = [key for key, _ in needles]
    assert len(keys) == niah.NUM_NEEDLES and len(set(keys)) == niah.NUM_NEEDLES
    asked = example.prompt[example.prompt.rindex("\n\n"):]
    assert [key for key in keys if key in asked] == keys[:1]
    assert example.answers == (needles[0][1],)


def test_multiquery_asks_every_key():
  example = make(variant="multiquery")
  needles = [NEEDLE.match(example.prompt, o).groups()
             for o in example.needle_char_offsets]
  asked = example.prompt[example.prompt.rindex("\n\n"):]
  assert all(key in asked for key, _ in needles)
  assert example.answers == tuple(value for _, value in needles)


def test_multivalue_has_one_key_and_asks_all_values():
  example = make(variant="multivalue")
  needles = [NEEDLE.match(example.prompt, o).groups()
             for o in example.needle_char_offsets]
  assert len({key for key, _ in needles}) == 1
  assert len(set(example.answers)) == niah.NUM_NEEDLES
  assert example.answers == tuple(value for _, value in needles)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_multi_needles_are_spread_around_the_depth(depth):
  example = make(variant="multiquery", depth=depth, target=20000)
  offsets = np.array(example.needle_char_offsets) / len(example.prompt)
  assert abs(offsets[0] - depth) < 0.03
  assert len(set(example.needle_char_offsets)) == niah.NUM_NEEDLES
  assert np.all(np.abs(offsets - depth) < niah.NUM_NEEDLES * niah.NEEDLE_SPACING)


def test_score_is_exact_whole_number_match():
  answers = ("1234567", "2345678")
  assert niah.score("1234567 and 2345678.", answers) == 1.0
  assert niah.score("are: 2345678, then 7654321", answers) == 0.5
  assert niah.score("no numbers here", answers) == 0.0
  assert niah.score("12345678 and 23456789", answers) == 0.0
  assert niah.score("x1234567y", answers) == 1.0 / 2


def test_aggregate_groups_by_variant_length_depth():
  examples = [make(variant=v, depth=d, seed=s)
              for v in ("single", "multivalue") for d in (0.0, 1.0) for s in (0, 1)]
  generations = [" ".join(e.answers) if e.depth == 0.0 else e.answers[0]
                 for e in examples]
  results = niah_runner.aggregate(examples, generations)
  rates = {(r["variant"], r["depth"]): r["success_rate"] for r in results}
  assert rates == {("single", 0.0): 1.0, ("single", 1.0): 1.0,
                   ("multivalue", 0.0): 1.0, ("multivalue", 1.0): 0.25}
  assert all(r["trials"] == 2 and r["length"] == 4000 for r in results)


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="haystack"), "unknown NIAH variant"),
    (dict(depth=1.5), r"within \[0, 1\]"),
    (dict(target=20), "too small"),
    (dict(haystack="  "), "no text"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make(**kwargs)


@pytest.mark.parametrize("variant", niah.VARIANTS)
def test_training_documents_are_the_evaluated_task_with_its_answer(variant):
  """A training document is an evaluation prompt followed by its answer, tokenized
  apart as evaluation does, within the document length it was given."""
  byte = tokenizers.ByteTokenizer()
  source = niah.NeedleSource(niah.Haystack(prose()), byte, size=50, min_tokens=None,
                             max_tokens=1200, variants=[variant], seed=0)
  for index in range(5):
    example = source.example(index)
    document = source[index]
    assert len(document) <= 1200
    prompt_tokens = byte.encode(example.prompt)
    assert list(document[:len(prompt_tokens)]) == prompt_tokens
    answer = byte.decode(document[len(prompt_tokens):])
    assert answer == example.answer_text
    assert niah.score(answer, example.answers) == 1.0
    assert example.prompt.startswith(niah.PREAMBLE)
    assert example.prompt.endswith(niah.QUESTION.format(keys="X").rsplit("X", 1)[1])
  np.testing.assert_array_equal(source[3], source[3])
  assert not np.array_equal(source[3], source[4])


@pytest.mark.parametrize("variant", niah.VARIANTS)
def test_minimum_tokens_fits_every_variant(variant):
  byte = tokenizers.ByteTokenizer()
  floor = niah.minimum_tokens(byte, variant)
  source = niah.NeedleSource(niah.Haystack(prose()), byte, size=20, min_tokens=floor,
                             max_tokens=floor, variants=[variant], seed=1)
  assert all(len(source[i]) <= floor for i in range(20))
  with pytest.raises(ValueError, match="need at least"):
    niah.NeedleSource(niah.Haystack(prose()), byte, size=1, min_tokens=None,
                      max_tokens=floor - 1, variants=[variant], seed=1)
