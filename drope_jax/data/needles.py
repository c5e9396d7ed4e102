"""The needle-in-a-haystack task, RULER-style: one definition for training and evaluation.

A needle reads "One of the special magic numbers for {adjective-noun} is:
{7-digit number}." and is hidden at a sentence boundary of real prose. The
prompt ends with a question the model completes with the asked numbers
(`answer_text`). Training documents (`NeedleSource`: prompt + answer, at the
training length) and evaluation prompts (drope_jax/eval/niah_runner.py, at
longer lengths, on held-out prose) are built by the same `make_example`, so a
model that learns retrieval in training meets the same task when evaluated.
Variants:

- single: one needle, asked.
- multikey: NUM_NEEDLES needles with distinct keys, one asked.
- multiquery: NUM_NEEDLES needles with distinct keys, all asked.
- multivalue: NUM_NEEDLES values under one key, all asked.

`make_example` does not know the tokenizer: `count_tokens` measures prompts, so
the same code serves byte, SentencePiece and Hugging Face tokenizers.
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import re

import numpy as np

from drope_jax.data import sources as sources_lib
from drope_jax.data import tokenizers as tokenizers_lib

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
NEEDLE = "One of the special magic numbers for {key} is: {value}. "
QUESTION = ("\n\nWhat are all the special magic numbers for {keys} mentioned "
             "in the provided text? The special magic numbers for {keys} "
             "mentioned in the provided text are")
# A sentence runs to . ! or ? followed by whitespace; it keeps that whitespace
# so that joining sentences gives back the text.
_SENTENCE = re.compile(r".+?(?:[.!?](?=\s)|$)\s*", re.DOTALL)
# A 7-digit number that is not part of a longer run of digits.
_SEVEN_DIGITS = re.compile(r"(?<!\d)\d{7}(?!\d)")


class Haystack:
  """Real prose cut into sentences once; examples take runs of them."""

  def __init__(self, text: str):
    self.sentences = [s if s[-1].isspace() else s + " "
                      for s in _SENTENCE.findall(text.strip())]
    if not self.sentences:
      raise sources_lib.InputError("the needle haystack has no text: pass real prose")

  def __len__(self) -> int:
    return len(self.sentences)


@dataclasses.dataclass(frozen=True)
class NiahExample:
  prompt: str
  answers: tuple[str, ...]
  depth: float
  variant: str
  # Where each needle starts in `prompt`; the first is the (first) asked one.
  needle_char_offsets: tuple[int, ...]
  target_tokens: int

  @property
  def answer_text(self) -> str:
    """The completion that answers the question: " 1234567." or " a, b, c and d."."""
    return " " + _join(self.answers) + "."


def make_example(
    haystack: Haystack,
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
  sentences = haystack.sentences

  needles, asked_keys, answers = _needles(variant, rng)
  question = QUESTION.format(keys=_join(asked_keys))
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


def answer_budget(tokenizer: tokenizers_lib.Tokenizer, variants: Sequence[str]) -> int:
  """Tokens that surely hold the answer of every variant in `variants`."""
  asked = max(1 if v in ("single", "multikey") else NUM_NEEDLES for v in variants)
  return asked * (len(tokenizer.encode(" 1234567,")) + 1) + 4


def minimum_tokens(tokenizer: tokenizers_lib.Tokenizer, variant: str) -> int:
  """The shortest document (prompt + answer) that surely fits `variant`."""
  needles, asked_keys, _ = _needles(variant, np.random.default_rng(0))
  key = max((f"{a}-{n}" for a in ADJECTIVES for n in NOUNS), key=len)
  prompt, _ = _assemble([], [(key, "9" * 7)] * len(needles), [0.0] * len(needles),
                        QUESTION.format(keys=_join([key] * len(asked_keys))))
  # BPE may split another key or value into more pieces: keep a margin.
  return (len(tokenizer.encode(prompt)) + answer_budget(tokenizer, [variant])
          + 4 * (NUM_NEEDLES + 1))


class NeedleSource:
  """`size` training documents, each a needle prompt followed by its answer.

  Document `i` is fixed by (`seed`, `i`): its variant (drawn from `variants`),
  depth and length (uniform in [min_tokens, max_tokens]; min_tokens None: half
  of max_tokens, or the least that fits). Tokens are the prompt's then the
  answer's, tokenized apart, exactly as evaluation feeds a prompt and reads
  the answer.
  """

  def __init__(self, haystack: Haystack, tokenizer: tokenizers_lib.Tokenizer, *,
               size: int, min_tokens: int | None, max_tokens: int,
               variants: Sequence[str], seed: int):
    unknown = set(variants) - set(VARIANTS)
    if not variants or unknown:
      raise sources_lib.InputError(
          f"data.needle_variants={','.join(variants)!r}: use a comma-separated "
          f"subset of {','.join(VARIANTS)}")
    floor = max(minimum_tokens(tokenizer, v) for v in variants)
    if min_tokens is None:
      min_tokens = min(max_tokens, max(max_tokens // 2, floor))
    if not floor <= min_tokens <= max_tokens:
      raise sources_lib.InputError(
          f"needle documents of {min_tokens}..{max_tokens} tokens: variants "
          f"{','.join(variants)} need at least {floor} tokens and min <= max. Raise "
          "data.needle_min_tokens / data.needle_max_tokens (or the sequence "
          "length), or drop the multi-needle variants from data.needle_variants.")
    self._haystack = haystack
    self._tokenizer = tokenizer
    self._size = size
    self._min_tokens = min_tokens
    self._max_tokens = max_tokens
    self._variants = tuple(variants)
    self._seed = seed

  def __len__(self) -> int:
    return self._size

  def example(self, index: int) -> NiahExample:
    rng = np.random.default_rng([self._seed, index])
    variant = self._variants[int(rng.integers(len(self._variants)))]
    num_tokens = int(rng.integers(self._min_tokens, self._max_tokens + 1))
    budget = answer_budget(self._tokenizer, [variant])
    return make_example(
        self._haystack, variant=variant, target_tokens=num_tokens - budget,
        depth=float(rng.uniform()), rng=rng,
        count_tokens=lambda text: len(self._tokenizer.encode(text)))

  def __getitem__(self, index: int) -> np.ndarray:
    example = self.example(index)
    encode = self._tokenizer.encode_array
    return np.concatenate([encode(example.prompt),
                           encode(example.answer_text)]).astype(np.int32)

  def __repr__(self) -> str:
    return (f"NeedleSource({self._size} documents of {self._min_tokens}-"
            f"{self._max_tokens} tokens, variants {','.join(self._variants)})")


def stdlib_haystack(split: str, eval_fraction: float) -> Haystack:
  """The stdlib corpus's `split` as a haystack: text available offline."""
  root, files = sources_lib.stdlib_files(split, eval_fraction)
  return Haystack("\n".join(
      (root / name).read_bytes().decode("utf-8", errors="replace") for name in files))


def text_haystack(patterns: str, text_field: str, split: str,
                  eval_fraction: float) -> Haystack:
  """The documents of raw text files (as `prepare` reads them) in `split`; they
  are held out by the same key as in `prepare`."""
  stats = sources_lib.ReadStats()
  texts = []
  for path in sources_lib.expand_paths(patterns):
    for index, text in enumerate(sources_lib.read_texts(path, text_field, stats)):
      key = sources_lib.document_key(path, index)
      if sources_lib.in_eval_split(key, eval_fraction) == (split == "eval"):
        texts.append(text)
  return Haystack("\n\n".join(texts))


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


def _join(items):
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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
      parts.append(NEEDLE.format(key=key, value=value))
      offsets[i] = position
      position += len(parts[-1])
    if boundary < len(sentences):
      parts.append(sentences[boundary])
      position += len(sentences[boundary])
  return "".join(parts).rstrip() + question, tuple(offsets)
