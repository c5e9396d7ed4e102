"""How a text starts for the model: the one place that decides the tokens before it.

A model reads a text best when it starts as texts started in its training. The run
config's `data.framing` names how that was:

  eos   a native run (the default): training joins documents with EOS, so a prompt
        (generate, NIAH) starts after an EOS; a perplexity window is a cut of that
        stream, as a training row is, with nothing before it.
  bos   an imported model whose source tokenizer starts a text with BOS (Llama,
        Mistral, Gemma): BOS before a prompt and before every window.
  none  an imported model whose source tokenizer adds nothing (Qwen2, SmolLM2): the
        text alone.

`hf import` records its source's (drope_jax/hf/source_tokenizer.py). A --chat prompt is
framed by its chat template instead (drope_jax/eval/prompting.py).
"""

from collections.abc import Sequence

import numpy as np

FRAMINGS = ("eos", "bos", "none")
NATIVE = "eos"


def of_config(config) -> str:
  """The run's framing; runs written before `data.framing` existed are native."""
  return config.data.get("framing", NATIVE)


def prompt_prefix(framing: str, tokenizer) -> list[int]:
  """The tokens before a prompt."""
  return {"eos": [tokenizer.eos_id], "bos": [tokenizer.bos_id], "none": []}[framing]


def window_prefix(framing: str, tokenizer) -> list[int]:
  """The tokens before a window of held-out text (drope_jax/eval/heldout.py)."""
  return [tokenizer.bos_id] if framing == "bos" else []


def prompt(framing: str, tokenizer, tokens: Sequence[int]) -> np.ndarray:
  """`tokens` (a prompt's) as the model reads them: int32, after the prefix."""
  return np.concatenate([prompt_prefix(framing, tokenizer), tokens]).astype(np.int32)
