"""Autoregressive generation with the KV cache, for RoPE and NoPE models alike.

    completions = generate.complete(graphdef, params, prompts, positional=...,
                                    sampling=Sampling(max_new_tokens=32), eos_id=...)

Prompts of different lengths share a batch right-padded: the prompt is prefilled in
chunks (memory linear in the context, as with the chunked kernel; one chunk for
dynamic NTK, whose frequencies depend on the length seen), then every row
decodes one token per step at its own cache slot, so padding is never attended to:
a padded slot is overwritten before any query can see it. The decode loop is one
jitted lax.while_loop that stops when every row has emitted EOS.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from drope_jax.model.positional import Positional


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_new_tokens: int
  temperature: float = 0.0   # 0: greedy.
  top_k: int = 0             # 0: the whole vocabulary.


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def make_generate_fn(graphdef, positional: Positional, sampling: Sampling, *,
                     eos_id: int, pad_id: int, vocab_limit: int | None = None,
                     prefill_chunk: int = 512, return_logits: bool = False):
  """A jitted (params, prompts_BP, lengths_B, rng) -> new tokens [B, max_new_tokens].

  prompts_BP: right-padded prompt ids with P a multiple of min(prefill_chunk, P);
  lengths_B: the real length of each prompt (>= 1). Rows that finished hold pad_id.
  With `return_logits`, also the logits each token was picked from [B, N, V].
  """
  max_new = sampling.max_new_tokens

  def pick(logits_BV, rng):
    if vocab_limit is not None:  # the embedding may be wider than the tokenizer.
      logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit,
                            logits_BV, -jnp.inf)
    if sampling.temperature <= 0:
      return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if sampling.top_k > 0:
      kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
      logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(rng, logits_BV / sampling.temperature).astype(jnp.int32)

  def prefill(model, prompts_BP, lengths_B, cache):
    """Writes the prompts into the cache; returns the logits after each last token."""
    b, p = prompts_BP.shape
    # Dynamic NTK scales by the length seen: the whole prompt must be one chunk.
    chunk = p if positional.scaling == "dynamic_ntk" else min(prefill_chunk, p)
    if p % chunk:
      raise ValueError(f"prompt width {p} is not a multiple of the prefill chunk "
                       f"{chunk}: pad with pad_prompts")

    def body(c, carry):
      cache, last_BV = carry
      start = c * chunk
      tokens_BC = jax.lax.dynamic_slice_in_dim(prompts_BP, start, chunk, axis=1)
      # Padding gets the last real position: dynamic NTK then sees the true length.
      positions_BC = jnp.minimum(start + jnp.arange(chunk)[None], lengths_B[:, None] - 1)
      logits_BCV, cache = model.decode(tokens_BC, positional=positional,
                                       positions_BS=positions_BC, cache=cache,
                                       cache_index=start)
      last_B = lengths_B - 1 - start
      here_B = (last_B >= 0) & (last_B < chunk)
      picked_BV = jnp.take_along_axis(
          logits_BCV, jnp.clip(last_B, 0, chunk - 1)[:, None, None], axis=1)[:, 0]
      return cache, jnp.where(here_B[:, None], picked_BV, last_BV)

    last_BV = jnp.zeros((b, model.cfg.vocab_size), jnp.float32)
    return jax.lax.fori_loop(0, p // chunk, body, (cache, last_BV))

  def decode_rows(model, tokens_B, slots_B, cache):
    """One token per row, each at its own cache slot (vmapped over rows)."""
    def one_row(token, slot, row_cache):
      row_cache = jax.tree.map(lambda x_LTKD: x_LTKD[:, None], row_cache)
      logits_11V, row_cache = model.decode(
          token[None, None], positional=positional, positions_BS=slot[None, None],
          cache=row_cache, cache_index=slot)
      return logits_11V[0, 0], jax.tree.map(lambda x_L1TKD: x_L1TKD[:, 0], row_cache)
    # The cache is [L, B, T, K, D]: rows are its axis 1.
    return jax.vmap(one_row, in_axes=(0, 0, 1), out_axes=(0, 1))(tokens_B, slots_B, cache)

  def generate(params, prompts_BP, lengths_B, rng):
    model = nnx.merge(graphdef, params)
    b, p = prompts_BP.shape
    cache = model.init_cache(b, p + max_new)
    cache, logits_BV = prefill(model, prompts_BP, lengths_B, cache)

    def cond(state):
      i, _, _, _, _, done_B, _ = state
      return (i < max_new) & ~jnp.all(done_B)

    def body(state):
      i, cache, logits_BV, out_BN, seen_BNV, done_B, rng = state
      rng, step_rng = jax.random.split(rng)
      token_B = jnp.where(done_B, pad_id, pick(logits_BV, step_rng))
      out_BN = out_BN.at[:, i].set(token_B)
      if return_logits:
        seen_BNV = seen_BNV.at[:, i].set(logits_BV)
      done_B = done_B | (token_B == eos_id)
      logits_BV, cache = decode_rows(model, token_B, lengths_B + i, cache)
      return i + 1, cache, logits_BV, out_BN, seen_BNV, done_B, rng

    out_BN = jnp.full((b, max_new), pad_id, jnp.int32)
    seen_BNV = jnp.zeros((b, max_new, logits_BV.shape[-1]) if return_logits else (),
                         jnp.float32)
    done_B = jnp.zeros((b,), bool)
    state = (jnp.int32(0), cache, logits_BV, out_BN, seen_BNV, done_B, rng)
    _, _, _, out_BN, seen_BNV, _, _ = jax.lax.while_loop(cond, body, state)
    return (out_BN, seen_BNV) if return_logits else out_BN

  return jax.jit(generate)


def pad_prompts(prompts: list[np.ndarray], rows: int, pad_id: int, prefill_chunk: int,
                width: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads prompts into [rows, P] (repeating the last prompt to fill rows).

  P is at least `width` (a fixed width compiles once for many batches) and rounded
  so that the prefill chunks tile it.
  """
  width = _round_up(max(width, *(len(p) for p in prompts)), 16)
  width = _round_up(width, min(prefill_chunk, width))
  prompts = list(prompts) + [prompts[-1]] * (rows - len(prompts))
  tokens = np.full((rows, width), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  return tokens, np.array([len(p) for p in prompts], np.int32)


def complete(graphdef, params, prompts: list[np.ndarray], *, positional: Positional,
             sampling: Sampling, eos_id: int, pad_id: int, batch_size: int = 1,
             vocab_limit: int | None = None, seed: int = 0, width: int = 0,
             prefill_chunk: int = 512) -> list[np.ndarray]:
  """The generated ids of each prompt, up to (not including) EOS.

  Prompts are padded to at least `width` tokens: pass the longest expected prompt
  so that all batches share one compiled shape.
  """
  if any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  fn = make_generate_fn(graphdef, positional, sampling, eos_id=eos_id, pad_id=pad_id,
                        vocab_limit=vocab_limit, prefill_chunk=prefill_chunk)
  rng = jax.random.key(seed)
  completions = []
  for start in range(0, len(prompts), batch_size):
    group = prompts[start:start + batch_size]
    tokens_BP, lengths_B = pad_prompts(group, batch_size, pad_id, prefill_chunk, width)
    rng, batch_rng = jax.random.split(rng)
    out_BN = np.asarray(jax.device_get(fn(params, tokens_BP, lengths_B, batch_rng)))
    for row in out_BN[:len(group)]:
      stop = np.flatnonzero((row == eos_id) | (row == pad_id))
      completions.append(row[:stop[0]] if len(stop) else row)
  return completions
