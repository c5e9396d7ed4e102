"""Where each head looks when the model is about to answer a needle question.

On the NIAH prompts of drope_jax/eval/niah_runner.py (same seeds, so the same prompts
the NIAH evaluation scores), the query is the LAST prompt position, the one whose
next-token prediction starts the answer. For every layer and head, its attention
distribution p over the keys 0..q is summarised against the asked needle (the first of
`needle_char_offsets`):

  value tokens  [a, b): the tokens of the needle's 7-digit value;
  sentence      [s, e): the tokens of the whole needle sentence "One of the special
                magic numbers for {key} is: {value}. ";
  centre   = sum of p over keys in [a - 1, b + 1)      (the value, +-1 token);
  window   = sum of p over keys in [a - W, b + W)      (W = WINDOW tokens);
  peak     = max of p over keys in [a - W, b + W)      (the sharpest single key);
  sentence = sum of p over keys in [s, e);
  tail     = sum of p over keys < s - W or >= e + W   (far from the needle: more than
             W tokens outside its sentence; the question at the end is part of it).

Each is averaged over all prompts of a length (variants x depths x trials). `chance`
gives what uniform attention over the q + 1 keys would put on centre and sentence.
Prompts are right-padded to the length (one compilation per length); the query never
sees the padding, but dynamic NTK takes its frequencies from the padded length, as the
NIAH prefill does. Token positions come from tokenizing the prompt prefix up to a
character offset: exact for byte tokenizers, within a token of the truth for BPE (why
centre takes +-1).
"""

import collections
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from drope_jax import parallel
from drope_jax.data import framing as framing_lib
from drope_jax.data import needles
from drope_jax.eval import attention_probe
from drope_jax.eval import niah_runner
from drope_jax.model.positional import Positional

WINDOW = 4
METRICS = ("centre", "window", "peak", "sentence", "tail")
# needles.NEEDLE is "... for {key} is: {value}. ": the text between key and value, and after.
_BEFORE_VALUE, _AFTER_VALUE = needles.NEEDLE.split("{key}")[1].split("{value}")
_VALUE_CHARS = 7  # needles._needles draws 7-digit values.


def needle_spans(tokenizer, example: needles.NiahExample,
                 framing: str = framing_lib.NATIVE) -> tuple[tuple[int, int], ...]:
  """Token spans ((a, b) of the asked value, (s, e) of its sentence) in the prompt
  as niah_runner.make_prompts encodes it (the framing's prefix, then the prompt's
  tokens)."""
  start = example.needle_char_offsets[0]
  value_start = example.prompt.index(_BEFORE_VALUE, start) + len(_BEFORE_VALUE)
  end = min(value_start + _VALUE_CHARS + len(_AFTER_VALUE), len(example.prompt))
  prefix = len(framing_lib.prompt_prefix(framing, tokenizer))
  token = lambda char: prefix + len(tokenizer.encode(example.prompt[:char]))
  a, b = token(value_start), token(value_start + _VALUE_CHARS)
  return (a, max(b, a + 1)), (token(start), token(end))


def head_metrics(probs_LHT: np.ndarray, query: int, value: tuple[int, int],
                 sentence: tuple[int, int], window: int = WINDOW) -> dict[str, np.ndarray]:
  """The module doc's metrics, each [L, H], for one prompt whose query is `query`."""
  (a, b), (s, e) = value, sentence
  keys = np.arange(probs_LHT.shape[-1])
  mass = lambda inside: probs_LHT[..., inside].sum(-1)
  near = (keys >= a - window) & (keys < b + window)
  return dict(
      centre=mass((keys >= a - 1) & (keys < b + 1)),
      window=mass(near),
      peak=probs_LHT[..., near].max(-1),
      sentence=mass((keys >= s) & (keys < e)),
      tail=mass(((keys < s - window) | (keys >= e + window)) & (keys <= query)))


def chance(query: int, value: tuple[int, int], sentence: tuple[int, int]) -> dict:
  """centre and sentence under uniform attention over keys 0..query."""
  (a, b), (s, e) = value, sentence
  return dict(centre=(min(b + 1, query + 1) - max(a - 1, 0)) / (query + 1),
              sentence=(min(e, query + 1) - s) / (query + 1))


def make_probe_fn(graphdef, positional: Positional):
  """A jitted (params, tokens_BS, last_B) -> probs [L, B, H, S]."""
  def probe(params, tokens_BS, last_B):
    return attention_probe.last_query_probs(nnx.merge(graphdef, params), tokens_BS,
                                            last_B, positional)
  return jax.jit(probe)


def run(graphdef_for: Callable[[int], object], params, *, tokenizer, haystack: str, lengths: Sequence[int],
        variants: Sequence[str], depths: Sequence[float], trials: int,
        positional_for: Callable[[int], Positional], rows_for: Callable[[int], int],
        mesh, seed: int = 0, framing: str = framing_lib.NATIVE,
        progress: Callable[[str], None] = print) -> dict:
  """Per length, the mean of every metric per [layer][head] and the chance levels
  (graphdef_for(length): the model's structure, e.g. its attention kernel, there):
  {"lengths", "prompts", "metrics": {metric: [per length [L][H]]}, "chance": {...}}."""
  budget = needles.answer_budget(tokenizer, variants)
  haystack = needles.Haystack(haystack)
  out = dict(lengths=[], prompts=[], window=WINDOW,
             metrics={m: [] for m in METRICS}, chance={"centre": [], "sentence": []})
  for length in lengths:
    examples, prompts = niah_runner.make_prompts(
        tokenizer, haystack, length=length, variants=variants, depths=depths,
        trials=trials, seed=seed, answer_budget=budget, framing=framing,
        progress=progress)
    if not examples:
      continue
    probe = make_probe_fn(graphdef_for(length), positional_for(length))
    rows = rows_for(length)
    sums, chances = collections.defaultdict(float), collections.defaultdict(float)
    with parallel.mesh_context(mesh):
      for start in range(0, len(prompts), rows):
        batch = prompts[start:start + rows]
        tokens_BS = np.full((rows, length), tokenizer.pad_id, np.int32)
        last_B = np.zeros(rows, np.int32)
        for i, prompt in enumerate(batch):
          tokens_BS[i, :len(prompt)] = prompt
          last_B[i] = len(prompt) - 1
        probs_LBHS = np.asarray(jax.device_get(probe(params, tokens_BS, last_B)))
        for i, example in enumerate(examples[start:start + rows]):
          spans = needle_spans(tokenizer, example, framing)
          for name, value in head_metrics(probs_LBHS[:, i], int(last_B[i]), *spans).items():
            sums[name] = sums[name] + value
          for name, value in chance(int(last_B[i]), *spans).items():
            chances[name] += value
    n = len(examples)
    out["lengths"].append(length)
    out["prompts"].append(n)
    for name in METRICS:
      out["metrics"][name].append((sums[name] / n).tolist())
    for name in chances:
      out["chance"][name].append(chances[name] / n)
    centre = np.asarray(out["metrics"]["centre"][-1])
    layer, head = np.unravel_index(np.argmax(centre), centre.shape)
    progress(f"  needle attention length {length}: {n} prompts, centre mass: mean "
             f"{centre.mean():.3f}, best layer {layer} head {head} {centre.max():.3f} "
             f"(chance {out['chance']['centre'][-1]:.4f})")
  return out
