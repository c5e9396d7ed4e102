"""Runs the needle-in-a-haystack grid on a model: variants x lengths x depths x trials.

Every prompt is built by drope_jax.data.needles (the task training documents use) from
held-out prose, starts as the model's texts do (after an EOS for a native run, as a
document does in training; as its source tokenizer frames text for an imported model:
drope_jax/data/framing.py) and leaves room for the answer inside the evaluated
length; answers are decoded greedily with the KV cache and scored by exact match.
Trials are seeded per cell, so a rerun (or another model) sees the same prompts.
"""

import collections
import time
from collections.abc import Callable, Sequence

import numpy as np

from drope_jax.data import framing as framing_lib
from drope_jax.data import needles
from drope_jax.data import tokenizers
from drope_jax.eval import generate
from drope_jax.model.positional import Positional

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def make_prompts(tokenizer, haystack: needles.Haystack, *, length: int, variants: Sequence[str],
                 depths: Sequence[float], trials: int, seed: int, answer_budget: int,
                 framing: str = framing_lib.NATIVE, progress: Callable[[str], None] = print):
  """(examples, token prompts) of one length; each prompt + answer fits `length`.

  A variant whose needles and question alone do not fit is skipped, with a message.
  """
  count = lambda text: len(tokenizer.encode(text))
  prefix = len(framing_lib.prompt_prefix(framing, tokenizer))
  examples, prompts = [], []
  for v, variant in enumerate(variants):
    try:
      for d, depth in enumerate(depths):
        for trial in range(trials):
          rng = np.random.default_rng([seed, v, length, d, trial])
          example = needles.make_example(
              haystack, variant=variant, target_tokens=length - prefix - answer_budget,
              depth=depth, rng=rng, count_tokens=count)
          examples.append(example)
          prompts.append(framing_lib.prompt(framing, tokenizer,
                                            tokenizer.encode_array(example.prompt)))
    except ValueError as e:  # variants and depths are valid: the length is too short.
      progress(f"  niah {variant} skipped at length {length}: {e}")
      examples = [e for e in examples if e.variant != variant]
      prompts = prompts[:len(examples)]
  return examples, prompts


def run(graphdef, params, *, tokenizer: tokenizers.Tokenizer, haystack: str,
        lengths: Sequence[int], variants: Sequence[str], depths: Sequence[float],
        trials: int, positional_for: Callable[[int], Positional],
        rows_for: Callable[[int], int], seed: int = 0, vocab_limit: int | None = None,
        framing: str = framing_lib.NATIVE,
        progress: Callable[[str], None] = print) -> list[dict]:
  """Success rates as niah.aggregate gives them, for every (variant, length, depth)."""
  budget = needles.answer_budget(tokenizer, variants)
  haystack = needles.Haystack(haystack)
  sampling = generate.Sampling(max_new_tokens=budget)
  results = []
  for length in lengths:
    started = time.perf_counter()
    examples, prompts = make_prompts(
        tokenizer, haystack, length=length, variants=variants, depths=depths,
        trials=trials, seed=seed, answer_budget=budget, framing=framing,
        progress=progress)
    if not examples:
      continue
    completions = generate.complete(
        graphdef, params, prompts, positional=positional_for(length), sampling=sampling,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, batch_size=rows_for(length),
        vocab_limit=vocab_limit, seed=seed, width=length - budget)
    generations = [tokenizer.decode(c) for c in completions]
    # aggregate keys cells by the prompt budget; report the context length instead.
    cells = [dict(cell, length=length) for cell in aggregate(examples, generations)]
    results.extend(cells)
    mean = np.mean([cell["success_rate"] for cell in cells])
    progress(f"  niah length {length}: {len(examples)} prompts, mean success "
             f"{100 * mean:.1f}% ({time.perf_counter() - started:.0f}s)")
  return results


def aggregate(examples: Sequence[needles.NiahExample],
              generations: Sequence[str]) -> list[dict]:
  """Mean score per (variant, length, depth), as eval/niah.json "results"."""
  scores = collections.defaultdict(list)
  for example, generated in zip(examples, generations, strict=True):
    key = (example.variant, example.target_tokens, example.depth)
    scores[key].append(needles.score(generated, example.answers))
  ordered = sorted(scores, key=lambda k: (needles.VARIANTS.index(k[0]), k[1], k[2]))
  return [dict(variant=variant, length=length, depth=depth,
               success_rate=float(np.mean(scores[variant, length, depth])),
               trials=len(scores[variant, length, depth]))
          for variant, length, depth in ordered]
