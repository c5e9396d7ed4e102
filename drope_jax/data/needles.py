"""Synthetic long-context documents: key-value needles in a real haystack.

In the style of RULER's needle-in-a-haystack tasks: sentences
"One of the special magic numbers for {key} is: {value}." (key an
adjective-noun pair, value a 7-digit number) are inserted between lines of real
text, and the document ends with a question about one key and its answer.
Everything is drawn from a seeded generator, so example `i` is the same on
every machine, and lengths are exact in tokens of the tokenizer in use.

`make_example` serves the evaluation; `NeedleSource` serves them as training
documents (prompt + answer), usable in a data mixture.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from drope_jax.data import sources as sources_lib
from drope_jax.data import tokenizers as tokenizers_lib
from drope_jax.eval import niah

INTRO = "Remember the special magic numbers hidden in this text.\n"
NEEDLE = "One of the special magic numbers for {key} is: {value}.\n"
QUESTION = ("\nWhat is the special magic number for {key}? The special magic "
            "number for {key} is")
ANSWER = " {value}."


@dataclasses.dataclass(frozen=True)
class NeedleExample:
  """One haystack with needles; the model should continue `prompt` with
  `answer`."""
  prompt: np.ndarray        # int32 token ids: intro, haystack, needles, question.
  answer: np.ndarray        # int32 token ids of " {value}.".
  key: str
  value: str
  needle_positions: tuple[int, ...]  # token offset of each needle in `prompt`,
                                     # in the order of their keys.

  @property
  def tokens(self) -> np.ndarray:
    return np.concatenate([self.prompt, self.answer])


class Haystack:
  """Lines of real text, tokenized line by line on first use."""

  def __init__(self, lines: Sequence[str], tokenizer: tokenizers_lib.Tokenizer):
    if not lines:
      raise ValueError("the haystack has no text.")
    self._lines = lines
    self._tokenizer = tokenizer
    self._tokens = {}

  def __len__(self) -> int:
    return len(self._lines)

  def line_tokens(self, index: int) -> np.ndarray:
    tokens = self._tokens.get(index)
    if tokens is None:
      tokens = self._tokens[index] = self._tokenizer.encode_array(
          self._lines[index])
    return tokens


def make_example(haystack: Haystack, tokenizer: tokenizers_lib.Tokenizer, *,
                 num_tokens: int, rng: np.random.Generator,
                 num_needles: int = 1) -> NeedleExample:
  """A needle example of exactly `num_tokens` tokens (prompt + answer).

  `num_needles` distinct keys are hidden at uniformly drawn depths, each at a
  line boundary of the haystack; the question asks for one of them.
  """
  keys = niah.distinct_keys(rng, num_needles)
  values = [str(v) for v in rng.integers(1_000_000, 10_000_000, num_needles)]
  asked = int(rng.integers(num_needles))
  encode = tokenizer.encode_array
  intro = encode(INTRO)
  needles = [encode(NEEDLE.format(key=k, value=v)) for k, v in zip(keys, values)]
  question = encode(QUESTION.format(key=keys[asked]))
  answer = encode(ANSWER.format(value=values[asked]))
  budget = num_tokens - len(intro) - sum(map(len, needles)) - len(question)
  budget -= len(answer)
  if budget < 1:
    raise ValueError(
        f"num_tokens={num_tokens} leaves no room for haystack text around "
        f"{num_needles} needle(s): use at least {num_tokens - budget + 1}.")

  lines = _haystack_lines(haystack, budget, rng)
  # Needle j goes to the j-th smallest depth, before the line holding it.
  line_ends = np.cumsum([len(line) for line in lines])
  depths = np.sort(rng.uniform(0.0, 1.0, num_needles))
  slots = np.searchsorted(line_ends, depths * line_ends[-1])
  pieces, positions, offset = [intro], [], len(intro)
  for line_index, line in enumerate(lines):
    for needle_index in np.flatnonzero(slots == line_index):
      positions.append(offset)
      pieces.append(needles[needle_index])
      offset += len(needles[needle_index])
    pieces.append(line)
    offset += len(line)
  pieces.append(question)
  return NeedleExample(
      prompt=np.concatenate(pieces).astype(np.int32),
      answer=answer.astype(np.int32), key=keys[asked], value=values[asked],
      needle_positions=tuple(positions))


def minimum_tokens(tokenizer: tokenizers_lib.Tokenizer, num_needles: int) -> int:
  """The shortest `num_tokens` that surely fits the needles and the question."""
  key = max((f"{a}-{n}" for a in niah.ADJECTIVES for n in niah.NOUNS), key=len)
  value = "9" * 7
  fixed = (INTRO + NEEDLE.format(key=key, value=value) * num_needles
           + QUESTION.format(key=key) + ANSWER.format(value=value))
  # BPE may split another key into more pieces than this one: keep a margin.
  return len(tokenizer.encode(fixed)) + 4 * (num_needles + 1)


class NeedleSource:
  """`size` needle documents (prompt + answer); document `i` is fixed by
  (`seed`, `i`), with a length drawn from [min_tokens, max_tokens]
  (min_tokens=None: half of max_tokens, or the least that fits if more)."""

  def __init__(self, haystack_lines: Sequence[str],
               tokenizer: tokenizers_lib.Tokenizer, *, size: int,
               min_tokens: int | None, max_tokens: int, num_needles: int,
               seed: int):
    floor = minimum_tokens(tokenizer, num_needles)
    if min_tokens is None:
      min_tokens = min(max_tokens, max(max_tokens // 2, floor))
    if not floor <= min_tokens <= max_tokens:
      raise ValueError(
          f"needle documents of {min_tokens}..{max_tokens} tokens: with "
          f"{num_needles} needle(s) each needs at least {floor} tokens and min "
          "<= max. Raise data.needle_min_tokens / data.needle_max_tokens (or "
          "the sequence length), or lower data.needle_count.")
    self._haystack = Haystack(haystack_lines, tokenizer)
    self._tokenizer = tokenizer
    self._size = size
    self._min_tokens = min_tokens
    self._max_tokens = max_tokens
    self._num_needles = num_needles
    self._seed = seed

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> np.ndarray:
    rng = np.random.default_rng([self._seed, index])
    num_tokens = int(rng.integers(self._min_tokens, self._max_tokens + 1))
    example = make_example(self._haystack, self._tokenizer,
                           num_tokens=num_tokens, rng=rng,
                           num_needles=self._num_needles)
    return example.tokens

  def __repr__(self) -> str:
    return (f"NeedleSource({self._size} documents of {self._min_tokens}-"
            f"{self._max_tokens} tokens, {self._num_needles} needle(s) each)")


def stdlib_haystack(split: str, eval_fraction: float) -> list[str]:
  """Lines of the stdlib corpus's `split`: real text available offline."""
  root, files = sources_lib.stdlib_files(split, eval_fraction)
  lines = []
  for name in files:
    text = (root / name).read_bytes().decode("utf-8", errors="replace")
    lines.extend(line for line in text.splitlines(keepends=True) if line.strip())
  return lines


def text_haystack(patterns: str, text_field: str, split: str,
                  eval_fraction: float) -> list[str]:
  """Lines of raw text files (as `prepare` reads them) in `split`; documents
  are held out by the same key as in `prepare`."""
  stats = sources_lib.ReadStats()
  lines = []
  for path in sources_lib.expand_paths(patterns):
    for index, text in enumerate(sources_lib.read_texts(path, text_field, stats)):
      key = sources_lib.document_key(path, index)
      if sources_lib.in_eval_split(key, eval_fraction) == (split == "eval"):
        lines.extend(l for l in text.splitlines(keepends=True) if l.strip())
  return lines


def _haystack_lines(haystack: Haystack, budget: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
  """Consecutive lines from a random start, the last cut to fill `budget`."""
  start = int(rng.integers(len(haystack)))
  lines, total = [], 0
  for step in range(len(haystack)):
    tokens = haystack.line_tokens((start + step) % len(haystack))
    lines.append(tokens[:budget - total])
    total += len(lines[-1])
    if total == budget:
      return lines
  raise ValueError(
      f"the haystack holds {total} tokens, fewer than the {budget} needed.")
