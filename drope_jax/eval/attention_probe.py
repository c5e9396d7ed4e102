"""Attention probabilities as the model computes them, for analysis.

The kernels never materialise attention probabilities, so the probe recomputes them
from each layer's own projections (`Attention._project`: q/k-norm and the rotation of
the positional mode), the same logit scale (temperature / sqrt(head_dim)), the causal
mask and a float32 softmax; query head h reads kv head h // (H // K), as the kernels
do. The residual stream is advanced by the model's own blocks, so every layer is probed
on exactly the input the model gives it (tests/test_eval_analysis.py checks that the
probe's attention outputs equal the model's).
"""

import jax
import jax.numpy as jnp

from drope_jax.model.positional import Positional


def query_attention(attn, h_BSE, positions_BS, queries_BQ, positional: Positional):
  """Causal attention of the query positions `queries_BQ` over all keys of one layer.

  h_BSE: the layer's normed input. Returns (probs_BHQT float32, each row summing to 1
  over keys t <= its query, and the layer's attention output at the queries [B, Q, E]).
  """
  q_BSHD, k_BTKD, v_BTKD = attn._project(h_BSE, positions_BS, positional)
  group = q_BSHD.shape[2] // k_BTKD.shape[2]
  k_BTHD = jnp.repeat(k_BTKD, group, axis=2)
  v_BTHD = jnp.repeat(v_BTKD, group, axis=2)
  q_BQHD = jnp.take_along_axis(q_BSHD, queries_BQ[:, :, None, None], axis=1)
  logits_BHQT = jnp.einsum("bqhd,bthd->bhqt", q_BQHD, k_BTHD,
                           preferred_element_type=jnp.float32)
  logits_BHQT *= positional.logit_scale(q_BSHD.shape[-1])
  causal_BQT = jnp.arange(k_BTHD.shape[1])[None, None, :] <= queries_BQ[:, :, None]
  logits_BHQT = jnp.where(causal_BQT[:, None], logits_BHQT, -jnp.inf)
  probs_BHQT = jax.nn.softmax(logits_BHQT, axis=-1)
  out_BQHD = jnp.einsum("bhqt,bthd->bqhd", probs_BHQT.astype(v_BTHD.dtype), v_BTHD,
                        preferred_element_type=jnp.float32).astype(h_BSE.dtype)
  out_BQE = jnp.einsum("bqhd,hde->bqe", out_BQHD, attn.out_HDE[...].astype(out_BQHD.dtype))
  return probs_BHQT, out_BQE


def positions_of(tokens_BS):
  return jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)


def layer_inputs(model, tokens_BS, positional: Positional):
  """Yields (block, its normed attention input h_BSE, positions_BS), layer by layer,
  advancing the residual stream with the model's own blocks."""
  positions_BS = positions_of(tokens_BS)
  x_BSE = model.embed(tokens_BS)
  for i in range(model.cfg.n_layers):
    block = model.layer(i)
    yield block, block.attn_norm(x_BSE), positions_BS
    x_BSE = block(x_BSE, positions_BS, None, positional)


def last_query_probs(model, tokens_BS, last_B, positional: Positional):
  """Attention of position `last_B[b]` of each row over its keys, in every layer:
  float32 [layers, B, heads, S] (zero past the query). Rows may be right-padded past
  `last_B`: causal attention never lets the query see the padding."""
  probs = [query_attention(block.attn, h_BSE, positions_BS, last_B[:, None],
                           positional)[0][:, :, 0]
           for block, h_BSE, positions_BS in layer_inputs(model, tokens_BS, positional)]
  return jnp.stack(probs)
