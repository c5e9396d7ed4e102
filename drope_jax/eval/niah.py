"""RULER-style needle-in-a-haystack prompts and exact-match scoring.

A needle reads "One of the special magic numbers for {adjective-noun} is:
{7-digit number}." and is hidden at a sentence boundary of real prose (the
caller passes held-out text). The prompt ends with a question the model
completes. Variants:

- single: one needle, asked.
- multikey: NUM_NEEDLES needles with distinct keys, one asked.
- multiquery: NUM_NEEDLES needles with distinct keys, all asked.
- multivalue: NUM_NEEDLES values under one key, all asked.

Nothing here knows the tokenizer: `count_tokens` measures prompts, so the
same code serves byte, SentencePiece and Hugging Face tokenizers.
"""

import collections
from collections.abc import Callable, Iterable, Sequence
import dataclasses
import re

import numpy as np

VARIANTS = ("single", "multikey", "multiquery", "multivalue")
NUM_NEEDLES = 4  # As RULER's multi-needle tasks.
NEEDLE_SPACING = 0.05  # Depth between neighbouring needles of one example.

ADJECTIVES = (
    "ancient", "bitter", "bold", "brave", "bright", "calm", "clever", "cold",
    "crimson", "curious", "dark", "eager", "fancy", "fierce", "gentle",
    "golden", "grumpy", "hidden", "hollow", "humble", "icy", "jolly", "lazy",
    "little", "loud", "lucky", "misty", "noisy", "odd", "pale", "proud",
    "quiet", "rapid", "rusty", "silent", "silver", "sleepy", "tiny", "wild",
    "wise",
)
NOUNS = (
    "anchor", "badger", "basket", "beacon", "bridge", "candle", "canyon",
    "castle", "comet", "compass", "desert", "dragon", "falcon", "feather",
    "forest", "garden", "glacier", "hammer", "harbor", "island", "kettle",
    "lantern", "meadow", "mirror", "needle", "orchard", "otter", "pebble",
    "pepper", "pigeon", "pillow", "rabbit", "river", "saddle", "temple",
    "thunder", "tiger", "violin", "walrus", "window",
)

PREAMBLE = ("A few special magic numbers are hidden in the text below. "
            "Remember them: you will be asked about them at the end.\n\n")
_NEEDLE = "One of the special magic numbers for {key} is: {value}. "
_QUESTION = ("\n\nWhat are all the special magic numbers for {keys} mentioned "
             "in the provided text? The special magic numbers for {keys} "
             "mentioned in the provided text are")
# A sentence runs to . ! or ? followed by whitespace; it keeps that whitespace
# so that joining sentences gives back the text.
_SENTENCE = re.compile(r".+?(?:[.!?](?=\s)|$)\s*", re.DOTALL)
# A 7-digit number that is not part of a longer run of digits.
_SEVEN_DIGITS = re.compile(r"(?<!\d)\d{7}(?!\d)")


@dataclasses.dataclass(frozen=True)
class NiahExample:
  prompt: str
  answers: tuple[str, ...]
  depth: float
  variant: str
  # Where each needle starts in `prompt`; the first is the (first) asked one.
  needle_char_offsets: tuple[int, ...]
  target_tokens: int


def make_example(
    haystack: str,
    *,
    variant: str,
    target_tokens: int,
    depth: float,
    rng: np.random.Generator,
    count_tokens: Callable[[str], int],
) -> NiahExample:
  """Builds the longest prompt of at most `target_tokens` tokens.

  The haystack is taken in whole sentences from a random sentence onwards,
  wrapping around when it is too short. The first needle sits at the sentence
  boundary nearest `depth` (0 = start, 1 = end of the haystack, by
  characters); the others follow at NEEDLE_SPACING steps around it.
  """
  if variant not in VARIANTS:
    raise ValueError(
        f"unknown NIAH variant {variant!r}: use one of {', '.join(VARIANTS)}")
  if not 0 <= depth <= 1:
    raise ValueError(f"NIAH depth must be within [0, 1], got {depth}")
  sentences = [s if s[-1].isspace() else s + " "
               for s in _SENTENCE.findall(haystack.strip())]
  if not sentences:
    raise ValueError("NIAH haystack is empty: pass held-out prose")

  needles, asked_keys, answers = _needles(variant, rng)
  question = _QUESTION.format(keys=_join_keys(asked_keys))
  depths = _needle_depths(depth, len(needles))
  first = int(rng.integers(len(sentences)))

  def assemble(num_sentences):
    taken = [sentences[(first + i) % len(sentences)]
             for i in range(num_sentences)]
    return _assemble(taken, needles, depths, question)

  def fits(num_sentences):
    return count_tokens(assemble(num_sentences)[0]) <= target_tokens

  if not fits(0):
    raise ValueError(
        f"target_tokens={target_tokens} is too small for the needles and "
        "the question alone")
  # Exponential then binary search for the most sentences that fit.
  fitting, too_many = 0, 1
  while fits(too_many):
    fitting, too_many = too_many, 2 * too_many
  while too_many - fitting > 1:
    middle = (fitting + too_many) // 2
    fitting, too_many = (middle, too_many) if fits(middle) else (fitting, middle)
  prompt, offsets = assemble(fitting)
  return NiahExample(prompt, answers, depth, variant, offsets, target_tokens)


def score(generated: str, answers: Iterable[str]) -> float:
  """Fraction of `answers` that appear in `generated` as whole 7-digit numbers."""
  answers = tuple(answers)
  found = set(_SEVEN_DIGITS.findall(generated))
  return sum(answer in found for answer in answers) / len(answers)


def aggregate(examples: Sequence[NiahExample],
              generations: Sequence[str]) -> list[dict]:
  """Mean score per (variant, length, depth), as eval/niah.json "results"."""
  scores = collections.defaultdict(list)
  for example, generated in zip(examples, generations, strict=True):
    key = (example.variant, example.target_tokens, example.depth)
    scores[key].append(score(generated, example.answers))
  ordered = sorted(scores, key=lambda k: (VARIANTS.index(k[0]), k[1], k[2]))
  return [dict(variant=variant, length=length, depth=depth,
               success_rate=float(np.mean(scores[variant, length, depth])),
               trials=len(scores[variant, length, depth]))
          for variant, length, depth in ordered]


def distinct_keys(rng: np.random.Generator, count: int) -> list[str]:
  """`count` different "adjective-noun" needle keys."""
  if count > len(ADJECTIVES) * len(NOUNS):
    raise ValueError(f"at most {len(ADJECTIVES) * len(NOUNS)} needle keys.")
  flat = rng.choice(len(ADJECTIVES) * len(NOUNS), size=count, replace=False)
  return [f"{ADJECTIVES[i // len(NOUNS)]}-{NOUNS[i % len(NOUNS)]}" for i in flat]


def _needles(variant, rng):
  """Returns ([(key, value)] in placement order, asked keys, answers)."""
  count = 1 if variant == "single" else NUM_NEEDLES
  num_keys = 1 if variant in ("single", "multivalue") else count
  keys = distinct_keys(rng, num_keys)
  values = []
  while len(values) < count:
    value = str(rng.integers(1_000_000, 10_000_000))
    if value not in values:
      values.append(value)
  needles = [(keys[i % num_keys], value) for i, value in enumerate(values)]
  if variant == "multikey":
    return needles, keys[:1], tuple(values[:1])
  return needles, keys, tuple(values)


def _join_keys(keys):
  return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def _needle_depths(depth, count):
  """`depth` first, then the nearest grid points around it inside [0, 1]."""
  steps = sorted(range(-count, count + 1), key=lambda j: (abs(j), j < 0))
  depths = [depth + j * NEEDLE_SPACING for j in steps]
  inside = [d for d in depths if -1e-9 <= d <= 1 + 1e-9]
  return [min(max(d, 0.0), 1.0) for d in inside[:count]]


def _assemble(sentences, needles, depths, question):
  """Returns the prompt and the character offset of each needle in it."""
  starts = np.cumsum([0] + [len(s) for s in sentences])
  boundaries = [int(np.argmin(np.abs(starts - d * starts[-1]))) for d in depths]
  parts, offsets, position = [PREAMBLE], [0] * len(needles), len(PREAMBLE)
  for boundary in range(len(sentences) + 1):
    here = [i for i in range(len(needles)) if boundaries[i] == boundary]
    for i in sorted(here, key=lambda i: depths[i]):
      key, value = needles[i]
      parts.append(_NEEDLE.format(key=key, value=value))
      offsets[i] = position
      position += len(parts[-1])
    if boundary < len(sentences):
      parts.append(sentences[boundary])
      position += len(sentences[boundary])
  return "".join(parts).rstrip() + question, tuple(offsets)
