"""Everything positional lives here: RoPE (with its scaling methods), NoPE, temperature.

A `Positional` is a frozen, hashable description passed to the model's forward pass as
a static value. Switching RoPE -> NoPE (the DroPE drop) or applying PI / NTK / YaRN at
evaluation time changes only this object: the weights are the same, and jit builds a
new step function because the static value changed.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from drope_jax.model import rope_scaling

KINDS = ("rope", "nope")


@dataclasses.dataclass(frozen=True)
class Positional:
  kind: str = "rope"
  theta: float = 10_000.0
  scaling: str = "none"          # none | pi | ntk | yarn | dynamic_ntk (RoPE only).
  factor: float = 1.0            # s = evaluation length / training length.
  original_max_len: int = 0      # the training context length, for the scaling methods.
  temperature: float = 1.0       # beta: multiplies every attention logit.

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"positional kind {self.kind!r} is not one of {KINDS}")
    if self.scaling not in rope_scaling.METHODS:
      raise ValueError(f"rope scaling {self.scaling!r} is not one of {rope_scaling.METHODS}")
    if self.kind == "nope" and self.scaling != "none":
      raise ValueError("RoPE scaling applies to RoPE models only; NoPE models extend "
                       "with the softmax temperature instead")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be positive, got {self.temperature}")

  def logit_scale(self, head_dim: int) -> float:
    return self.temperature / math.sqrt(head_dim)

  def rotate(self, x_BSHD: jax.Array, positions_BS: jax.Array) -> jax.Array:
    """Applies the rotation for each token's position; the identity for NoPE."""
    if self.kind == "nope":
      return x_BSHD
    head_dim = x_BSHD.shape[-1]
    seq_len = None
    if self.scaling == "dynamic_ntk":
      seq_len = jnp.max(positions_BS) + 1
    inv_freq_F, attention_factor = rope_scaling.rope_frequencies(
        head_dim, self.theta, self.scaling, self.factor, self.original_max_len,
        seq_len=seq_len)
    angles_BSF = positions_BS[..., None].astype(jnp.float32) * inv_freq_F
    cos_BS1F = (jnp.cos(angles_BSF) * attention_factor)[:, :, None, :]
    sin_BS1F = (jnp.sin(angles_BSF) * attention_factor)[:, :, None, :]
    # Half-split convention (as in Llama / Hugging Face), not interleaved pairs.
    x1, x2 = jnp.split(x_BSHD.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate(
        [x1 * cos_BS1F - x2 * sin_BS1F, x2 * cos_BS1F + x1 * sin_BS1F], axis=-1)
    return rotated.astype(x_BSHD.dtype)

