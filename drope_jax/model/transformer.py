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
  scan_layers: bool = True
  # Keys added later (defaults keep older runs' metadata loadable).
  attention_bias: bool = False
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_original_max_len: int = 0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  splash_block_sizes: str = ""
  splash_fused_bwd: bool = True

  @classmethod
  def from_config(cls, model_config) -> "ModelConfig":
    return cls(**{k: v for k, v in dict(model_config).items()
                  if k not in ("pos_emb", "rope_theta")})


# model.remat: what each layer keeps for the backward pass ("none": everything).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer's input.
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # q, k, v after RoPE (named in attention.py): the backward recomputes the attention
    # and the MLP but not the projections, at 3 [B, S, heads, head_dim] a layer.
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj"),
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


def stacked_blocks(cfg, rngs: nnx.Rngs) -> Block:
  """All layers as one Block whose parameters carry a leading `layers` axis [L, ...].

  One layout whether the forward pass scans the layers or unrolls them, so checkpoints,
  evaluation and the Hugging Face conversion never depend on `scan_layers`.
  """
  @nnx.split_rngs(splits=cfg.n_layers)
  @nnx.vmap(in_axes=0, out_axes=0, axis_size=cfg.n_layers,
            transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return Block(cfg, rngs=rngs)

  return make(rngs)


def unstack(tree, n: int) -> list:
  """[tree of [n, ...] arrays] -> n trees of [...] slices.

  Splitting (whose transpose is one concatenate) rather than indexing n times (n pads of
  the full [n, ...] gradient, summed) keeps the unrolled backward pass linear in n.
  """
  leaves, treedef = jax.tree.flatten(tree)
  slices = [[jnp.squeeze(x, 0) for x in jnp.split(leaf, n)] for leaf in leaves]
  return [treedef.unflatten([s[i] for s in slices]) for i in range(n)]


class Transformer(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = layers.Embedding(cfg.vocab_size, cfg.d_model, std=cfg.init_std,
                                  param_dtype=cfg.param_dtype, dtype=cfg.dtype, rngs=rngs)
    self.blocks = stacked_blocks(cfg, rngs)
    self.final_norm = layers.RMSNorm((cfg.d_model,), ("embed",), eps=cfg.norm_eps,
                                     param_dtype=cfg.param_dtype)
    self.unembed_EV = None if cfg.tie_embeddings else layers.normal_param(
        rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std=cfg.init_std,
        dtype=cfg.param_dtype)

  def __call__(self, tokens_BS, *, positional: Positional, positions_BS=None,
               segment_ids_BS=None) -> jax.Array:
    """Returns float32 logits [B, S, V]."""
    return self.logits(self.hidden(tokens_BS, positional=positional,
                                   positions_BS=positions_BS,
                                   segment_ids_BS=segment_ids_BS))

  def hidden(self, tokens_BS, *, positional: Positional, positions_BS=None,
             segment_ids_BS=None) -> jax.Array:
    """The residual stream after the last layer [B, S, E]: `logits` takes it on."""
    if positions_BS is None:
      positions_BS = jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)
    x_BSE = self.embed(tokens_BS)

    def layer(block, x_BSE, _):
      return block(x_BSE, positions_BS, segment_ids_BS, positional), None

    x_BSE, _ = self._over_layers(layer, x_BSE)
    return x_BSE

  def _over_layers(self, layer, x, per_layer=None):
    """Runs `layer(block, x, per_layer_i) -> (x, out_i)` through the layers in order.

    `per_layer` is a tree of [L, ...] arrays (a KV cache) or None; returns x and the
    outs stacked to [L, ...]. With `scan_layers`, XLA compiles one layer, not L.
    """
    graphdef, stacked = nnx.split(self.blocks)

    def body(x, inputs):
      params, extra = inputs
      return layer(nnx.merge(graphdef, params), x, extra)

    if self.cfg.remat != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat],
                            prevent_cse=not self.cfg.scan_layers)
    if self.cfg.scan_layers:
      return jax.lax.scan(body, x, (stacked, per_layer))
    outs = []
    for inputs in unstack((stacked, per_layer), self.cfg.n_layers):
      x, out = body(x, inputs)
      outs.append(out)
    return x, jax.tree.map(lambda *o: jnp.stack(o), *outs)

  def layer(self, i: int) -> Block:
    """Layer i as a Block of its own (a copy: writing to it leaves the model as is)."""
    graphdef, stacked = nnx.split(self.blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], stacked))

  def logits(self, x_BSE):
    """Float32 logits [B, S, V] of the residual stream [B, S, E] (final norm included)."""
    x_BSE = self.final_norm(x_BSE)
    if self.unembed_EV is None:
      logits_BSV = self.embed.attend(x_BSE)
    else:
      logits_BSV = layers.dense(x_BSE, self.unembed_EV[...].astype(x_BSE.dtype))
    return parallel.constrain(logits_BSV.astype(jnp.float32), ("batch", "seq", "act_vocab"))

  def init_cache(self, batch_size: int, max_len: int, dtype=None):
    """An empty KV cache: (k, v), each [L, B, max_len, K, D]."""
    cfg = self.cfg
    shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
    dtype = dtype or cfg.dtype
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

  def decode(self, tokens_BS, *, positional: Positional, positions_BS, cache, cache_index):
    """Runs S new tokens against the cache; returns (logits [B, S, V], cache)."""
    def layer(block, x_BSE, layer_cache):
      return block.decode(x_BSE, positions_BS, positional, layer_cache, cache_index)

    x_BSE, cache = self._over_layers(layer, self.embed(tokens_BS), cache)
    return self.logits(x_BSE), cache
