"""Small building blocks: RMSNorm, the token embedding, the SwiGLU MLP.

Every parameter carries logical axis names (see drope_jax/parallel.py for the table).
Weight decay skips parameters named `scale` (norm gains): keep that name for gains.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from drope_jax import parallel


def dense(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
  """Contracts the last `contract` axes of x with the first of w: one 2-D matmul.

  x [..., I1..Ic] and w [I1..Ic, O...] become [tokens, I] @ [I, O]. The einsum form
  ('bse,ef->bsf') differentiates into dots whose operands XLA:CPU first transposes
  in memory (a tenth of the tiny config's step); plain matmuls need no copies.
  """
  lead, out = x.shape[:x.ndim - contract], w.shape[contract:]
  x_TI = x.reshape(math.prod(lead), -1)
  w_IO = w.reshape(x_TI.shape[1], -1)
  return (x_TI @ w_IO).reshape(*lead, *out)


def normal_param(rngs: nnx.Rngs, shape, names, *, std: float, dtype) -> nnx.Param:
  value = std * jax.random.normal(rngs.params(), shape, jnp.dtype(dtype))
  return nnx.Param(value, out_sharding=names)


class RMSNorm(nnx.Module):
  """RMS normalisation over the trailing `len(shape)` axes, gain initialised to 1."""

  def __init__(self, shape: tuple[int, ...], names: tuple[str, ...], *, eps: float,
               param_dtype):
    self.scale = nnx.Param(jnp.ones(shape, jnp.dtype(param_dtype)), out_sharding=names)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(-self.scale.ndim, 0))
    x_f32 = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x_f32), axis=axes, keepdims=True)
    normed = x_f32 * jax.lax.rsqrt(mean_square + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Embedding(nnx.Module):
  """Token embedding; also the output projection when embeddings are tied."""

  def __init__(self, vocab_size: int, d_model: int, *, std: float, param_dtype, dtype,
               rngs: nnx.Rngs):
    self.table_VE = normal_param(rngs, (vocab_size, d_model), ("vocab", "embed"),
                                 std=std, dtype=param_dtype)
    self.dtype = jnp.dtype(dtype)

  def __call__(self, tokens_BS: jax.Array) -> jax.Array:
    # Gather from a table whole along 'embed' (FSDP's all-gather of a weight at use):
    # XLA cannot gather rows sharded over fsdp into a batch sharded over fsdp.
    table_VE = parallel.constrain(self.table_VE[...].astype(self.dtype), ("vocab", None))
    x_BSE = jnp.take(table_VE, tokens_BS, axis=0)
    return parallel.constrain(x_BSE, ("batch", "seq", "act_embed"))

  def attend(self, x_BSE: jax.Array) -> jax.Array:
    return dense(x_BSE, self.table_VE[...].astype(self.dtype).T)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, d_model: int, d_ff: int, *, std: float, param_dtype, dtype,
               rngs: nnx.Rngs):
    self.gate_EF = normal_param(rngs, (d_model, d_ff), ("embed", "mlp"), std=std,
                                dtype=param_dtype)
    self.up_EF = normal_param(rngs, (d_model, d_ff), ("embed", "mlp"), std=std,
                              dtype=param_dtype)
    self.down_FE = normal_param(rngs, (d_ff, d_model), ("mlp", "embed"), std=std,
                                dtype=param_dtype)
    self.dtype = jnp.dtype(dtype)

  def __call__(self, x_BSE: jax.Array) -> jax.Array:
    gate_BSF = dense(x_BSE, self.gate_EF[...].astype(self.dtype))
    up_BSF = dense(x_BSE, self.up_EF[...].astype(self.dtype))
    h_BSF = parallel.constrain(jax.nn.silu(gate_BSF) * up_BSF, ("batch", "seq", "act_mlp"))
    return dense(h_BSF, self.down_FE[...].astype(self.dtype))
