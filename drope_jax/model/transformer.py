"""A Llama / Qwen2-style decoder: pre-norm blocks of GQA attention and a SwiGLU MLP.

    logits_BSV = Transformer(cfg, rngs=...)(tokens_BS, positional=..., positions_BS=...)

`positional` (drope_jax.model.positional.Positional) is static: RoPE, NoPE, and the
evaluation-time scaling methods all run the same weights.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from drope_jax import parallel
from drope_jax.model import attention
from drope_jax.model import layers
from drope_jax.model.positional import Positional

@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The `model` section of a run config, frozen (modules keep it as static data).

  The positional keys are not here: the run's plan turns them into a `Positional`.
  """
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  tie_embeddings: bool
  init_std: float
  norm_eps: float
  param_dtype: str
  dtype: str
  qk_norm: str
  attention: str
  attention_chunk: int
  remat: str
  # Keys added later (defaults keep older runs' metadata loadable).
  attention_bias: bool = False
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_original_max_len: int = 0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  splash_block_sizes: str = ""

  @classmethod
  def from_config(cls, model_config) -> "ModelConfig":
    return cls(**{k: v for k, v in dict(model_config).items()
                  if k not in ("pos_emb", "rope_theta")})


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    norm = lambda: layers.RMSNorm((cfg.d_model,), ("embed",), eps=cfg.norm_eps,
                                  param_dtype=cfg.param_dtype)
    self.attn_norm = norm()
    self.attn = attention.Attention(cfg, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = layers.MLP(cfg.d_model, cfg.d_ff, std=cfg.init_std,
                          param_dtype=cfg.param_dtype, dtype=cfg.dtype, rngs=rngs)

  def __call__(self, x_BSE, positions_BS, segment_ids_BS, positional):
    x_BSE = x_BSE + self.attn(self.attn_norm(x_BSE), positions_BS=positions_BS,
                              segment_ids_BS=segment_ids_BS, positional=positional)
    x_BSE = x_BSE + self.mlp(self.mlp_norm(x_BSE))
    return parallel.constrain(x_BSE, ("batch", "seq", "act_embed"))

  def decode(self, x_BSE, positions_BS, positional, cache, cache_index):
    h_BSE, cache = self.attn.decode(self.attn_norm(x_BSE), positions_BS=positions_BS,
                                    positional=positional, cache=cache,
                                    cache_index=cache_index)
    x_BSE = x_BSE + h_BSE
    return x_BSE + self.mlp(self.mlp_norm(x_BSE)), cache


class Transformer(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = layers.Embedding(cfg.vocab_size, cfg.d_model, std=cfg.init_std,
                                  param_dtype=cfg.param_dtype, dtype=cfg.dtype, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = layers.RMSNorm((cfg.d_model,), ("embed",), eps=cfg.norm_eps,
                                     param_dtype=cfg.param_dtype)
    self.unembed_EV = None if cfg.tie_embeddings else layers.normal_param(
        rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std=cfg.init_std,
        dtype=cfg.param_dtype)

  def __call__(self, tokens_BS, *, positional: Positional, positions_BS=None,
               segment_ids_BS=None) -> jax.Array:
    """Returns float32 logits [B, S, V]."""
    if positions_BS is None:
      positions_BS = jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)
    x_BSE = self.embed(tokens_BS)

    def run_block(block, x_BSE, positions_BS, segment_ids_BS):
      return block(x_BSE, positions_BS, segment_ids_BS, positional)

    if self.cfg.remat != "none":
      run_block = nnx.remat(run_block, policy=REMAT_POLICIES[self.cfg.remat])
    for block in self.blocks:
      x_BSE = run_block(block, x_BSE, positions_BS, segment_ids_BS)
    return self._logits(x_BSE)

  def _logits(self, x_BSE):
    x_BSE = self.final_norm(x_BSE)
    if self.unembed_EV is None:
      logits_BSV = self.embed.attend(x_BSE)
    else:
      logits_BSV = jnp.einsum("bse,ev->bsv", x_BSE, self.unembed_EV[...].astype(x_BSE.dtype))
    return parallel.constrain(logits_BSV.astype(jnp.float32), ("batch", "seq", "act_vocab"))

  def init_cache(self, batch_size: int, max_len: int, dtype=None):
    """An empty KV cache: one (k, v) pair of [B, max_len, K, D] per layer."""
    cfg = self.cfg
    shape = (batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
    dtype = dtype or cfg.dtype
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]

  def decode(self, tokens_BS, *, positional: Positional, positions_BS, cache, cache_index):
    """Runs S new tokens against the cache; returns (logits [B, S, V], cache)."""
    x_BSE = self.embed(tokens_BS)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x_BSE, layer_cache = block.decode(x_BSE, positions_BS, positional, layer_cache,
                                        cache_index)
      new_cache.append(layer_cache)
    return self._logits(x_BSE), new_cache
