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
  scaling: str = "none"          # one of rope_scaling.METHODS (RoPE only).
  factor: float = 1.0            # s = evaluation length / training length.
  original_max_len: int = 0      # the training context length, for the scaling methods.
  # beta: multiplies every attention logit. A traced scalar inside jit lets one program
  # try many values (the temperature fit); a static float is the usual case.
  temperature: float | jax.Array = 1.0
  low_freq_factor: float = 1.0   # llama3 only.
  high_freq_factor: float = 4.0  # llama3 only.

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"positional kind {self.kind!r} is not one of {KINDS}")
    if self.scaling not in rope_scaling.METHODS:
      raise ValueError(f"rope scaling {self.scaling!r} is not one of {rope_scaling.METHODS}")
    if self.kind == "nope" and self.scaling != "none":
      raise ValueError("RoPE scaling applies to RoPE models only; NoPE models extend "
                       "with the softmax temperature instead")
    if isinstance(self.temperature, (int, float)) and self.temperature <= 0:
      raise ValueError(f"temperature must be positive, got {self.temperature}")

  def logit_scale(self, head_dim: int) -> float | jax.Array:
    return self.temperature / math.sqrt(head_dim)

  def with_temperature(self, temperature: float | jax.Array | None) -> "Positional":
    """This mode with another beta (None: as it is)."""
    return self if temperature is None else dataclasses.replace(self, temperature=temperature)

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
        seq_len=seq_len, low_freq_factor=self.low_freq_factor,
        high_freq_factor=self.high_freq_factor)
    angles_BSF = positions_BS[..., None].astype(jnp.float32) * inv_freq_F
    # Angles in float32, the rotation in x's dtype, as Hugging Face does: a bfloat16
    # model gets no float32 copies of q and k.
    cos_BS1F = (jnp.cos(angles_BSF) * attention_factor).astype(x_BSHD.dtype)[:, :, None]
    sin_BS1F = (jnp.sin(angles_BSF) * attention_factor).astype(x_BSHD.dtype)[:, :, None]
    # Half-split convention (as in Llama / Hugging Face), not interleaved pairs.
    x1, x2 = jnp.split(x_BSHD, 2, axis=-1)
    return jnp.concatenate(
        [x1 * cos_BS1F - x2 * sin_BS1F, x2 * cos_BS1F + x1 * sin_BS1F], axis=-1)


# model.rope_scaling (a RoPE model's own scaling, as Hugging Face configs name it) ->
# the method here. Unlike evaluation-time scaling, it is part of the model.
MODEL_SCALINGS = {"none": "none", "linear": "pi", "dynamic": "dynamic_ntk",
                  "yarn": "yarn", "llama3": "llama3"}


def of_model(model_config, kind: str) -> Positional:
  """Positional `kind` ('rope' or 'nope') with the model's own theta and RoPE scaling."""
  theta = float(model_config.rope_theta)
  scaling = model_config.get("rope_scaling", "none")  # older runs lack the key.
  if kind == "nope" or scaling == "none":
    return Positional(kind=kind, theta=theta)
  return Positional(
      kind=kind, theta=theta, scaling=MODEL_SCALINGS[scaling],
      factor=float(model_config.rope_scaling_factor),
      original_max_len=int(model_config.rope_original_max_len),
      low_freq_factor=float(model_config.rope_low_freq_factor),
      high_freq_factor=float(model_config.rope_high_freq_factor))
