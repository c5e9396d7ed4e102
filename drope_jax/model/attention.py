"""Grouped-query self-attention with optional QK-norm and a KV cache for decoding.

The positional mode arrives as a static `Positional`; the kernel (xla, chunked, splash,
cudnn) sits behind `kernels.attention`, which takes [batch, seq, heads, head_dim].
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from drope_jax import parallel
from drope_jax.model import kernels
from drope_jax.model import layers
from drope_jax.model.positional import Positional


class Attention(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    e, h, k, d = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    std, pdt = cfg.init_std, jnp.dtype(cfg.param_dtype)
    self.q_EHD = layers.normal_param(rngs, (e, h, d), ("embed", "heads", "head_dim"),
                                     std=std, dtype=pdt)
    self.k_EKD = layers.normal_param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"),
                                     std=std, dtype=pdt)
    self.v_EKD = layers.normal_param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"),
                                     std=std, dtype=pdt)
    self.out_HDE = layers.normal_param(rngs, (h, d, e), ("heads", "head_dim", "embed"),
                                       std=std, dtype=pdt)
    # Qwen2 adds biases to the q, k, v projections.
    zeros = lambda shape, names: nnx.Param(jnp.zeros(shape, pdt), out_sharding=names)
    self.q_bias_HD = zeros((h, d), ("heads", "head_dim")) if cfg.attention_bias else None
    self.k_bias_KD = zeros((k, d), ("kv_heads", "head_dim")) if cfg.attention_bias else None
    self.v_bias_KD = zeros((k, d), ("kv_heads", "head_dim")) if cfg.attention_bias else None
    # QK-norm normalises the whole projected q (all heads together), as in the paper;
    # `head_qk` normalises each head over head_dim with one shared gain, as Qwen3 does.
    if cfg.qk_norm == "head_qk":
      q_shape, k_shape = ((d,), ("head_dim",)), ((d,), ("head_dim",))
    else:
      q_shape, k_shape = ((h, d), ("heads", "head_dim")), ((k, d), ("kv_heads", "head_dim"))
    norm = lambda shape, names: layers.RMSNorm(shape, names, eps=cfg.norm_eps,
                                               param_dtype=pdt)
    self.q_norm = norm(*q_shape) if "q" in cfg.qk_norm else None
    self.k_norm = norm(*k_shape) if "k" in cfg.qk_norm else None
    self.dtype = jnp.dtype(cfg.dtype)
    self.impl = cfg.attention
    self.chunk_size = cfg.attention_chunk
    self.splash_block_sizes = cfg.splash_block_sizes
    self.splash_fused_bwd = cfg.splash_fused_bwd

  def _project(self, x_BSE, positions_BS, positional):
    w = lambda p: p[...].astype(self.dtype)
    q_BSHD = layers.dense(x_BSE, w(self.q_EHD))
    k_BSKD = layers.dense(x_BSE, w(self.k_EKD))
    v_BSKD = layers.dense(x_BSE, w(self.v_EKD))
    if self.q_bias_HD is not None:
      q_BSHD, k_BSKD, v_BSKD = (q_BSHD + w(self.q_bias_HD), k_BSKD + w(self.k_bias_KD),
                                v_BSKD + w(self.v_bias_KD))
    if self.q_norm is not None:
      q_BSHD = self.q_norm(q_BSHD)
    if self.k_norm is not None:
      k_BSKD = self.k_norm(k_BSKD)
    q_BSHD = parallel.constrain(positional.rotate(q_BSHD, positions_BS),
                                ("batch", "seq", "act_heads", None))
    k_BSKD = parallel.constrain(positional.rotate(k_BSKD, positions_BS),
                                ("batch", "seq", "act_kv_heads", None))
    v_BSKD = parallel.constrain(v_BSKD, ("batch", "seq", "act_kv_heads", None))
    # Names for the remat policies (transformer.REMAT_POLICIES).
    return (checkpoint_name(q_BSHD, "query_proj"), checkpoint_name(k_BSKD, "key_proj"),
            checkpoint_name(v_BSKD, "value_proj"))

  def __call__(self, x_BSE, *, positions_BS, segment_ids_BS, positional: Positional):
    q, k, v = self._project(x_BSE, positions_BS, positional)
    out_BSHD = kernels.attention(
        q, k, v, impl=self.impl, scale=positional.logit_scale(q.shape[-1]),
        segment_ids=segment_ids_BS, chunk_size=self.chunk_size,
        splash_block_sizes=self.splash_block_sizes,
        splash_fused_bwd=self.splash_fused_bwd)
    return layers.dense(out_BSHD, self.out_HDE[...].astype(self.dtype), contract=2)

  def decode(self, x_BSE, *, positions_BS, positional: Positional, cache, cache_index):
    """Attends over the cache plus the S new tokens written at `cache_index`.

    cache: (k [B, T, K, D], v [B, T, K, D]); returns (out [B, S, E], updated cache).
    """
    q, k_new, v_new = self._project(x_BSE, positions_BS, positional)
    k_cache, v_cache = cache
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_new.astype(k_cache.dtype),
                                                  cache_index, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v_new.astype(v_cache.dtype),
                                                  cache_index, axis=1)
    s, t = q.shape[1], k_cache.shape[1]
    query_slot_S = cache_index + jnp.arange(s)
    mask_ST = jnp.arange(t)[None, :] <= query_slot_S[:, None]
    mask_BST = jnp.broadcast_to(mask_ST, (q.shape[0], s, t))
    out_BSHD = kernels.masked_attention(
        q, k_cache.astype(q.dtype), v_cache.astype(q.dtype),
        scale=positional.logit_scale(q.shape[-1]), mask=mask_BST)
    out = layers.dense(out_BSHD, self.out_HDE[...].astype(self.dtype), contract=2)
    return out, (k_cache, v_cache)
