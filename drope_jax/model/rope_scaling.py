"""RoPE frequencies and the context-extension baselines applied at evaluation.

Every method returns the per-pair inverse frequencies (the rotation of pair i
at position p is p * inv_freq[i]) and an attention factor that multiplies cos
and sin, as Hugging Face's RoPE does (so the logits scale by its square).
`factor` is the extension ratio s = eval_len / train_len.

- none: theta^(-2i/d).
- pi: positions divided by s, i.e. every frequency divided by s.
- ntk: NTK-aware base theta * s^(d/(d-2)).
- yarn: pairs that turn many times within the training length keep their
  frequency, pairs that turn less than once are interpolated like PI, a linear
  ramp in between (beta_fast, beta_slow turns); attention factor 0.1 ln s + 1.
- llama3: Llama 3.1's split by wavelength: pairs turning fewer than
  low_freq_factor times in original_max_len are interpolated like PI, those
  turning more than high_freq_factor times keep their frequency, a smooth
  blend in between. A training-time setting (imported Llama 3.x models).
- dynamic_ntk: NTK base recomputed from the current length L when
  L > original_max_len, as theta * (s L / L0 - (s - 1))^(d/(d-2)); identity
  otherwise. L may be a traced scalar.

The formulas follow Hugging Face transformers' `linear`, `yarn`, `llama3` and
`dynamic` RoPE types; tests/test_rope_scaling.py checks them against it.
"""

import math

import jax.numpy as jnp
import numpy as np

METHODS = ("none", "pi", "ntk", "yarn", "dynamic_ntk", "llama3")


def rope_frequencies(
    head_dim: int,
    theta: float,
    method: str = "none",
    factor: float = 1.0,
    original_max_len: int = 0,
    seq_len=None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
):
  """Returns (inv_freq [head_dim // 2] float32, attention_factor float).

  inv_freq is a numpy array, except for `dynamic_ntk` with a `seq_len`, where
  it is a jax array so that a traced length works under jit.
  """
  _check_arguments(head_dim, method, factor, original_max_len)
  if method == "none":
    return _inv_freq(head_dim, theta).astype(np.float32), 1.0
  if method == "pi":
    return (_inv_freq(head_dim, theta) / factor).astype(np.float32), 1.0
  if method == "ntk":
    base = theta * factor ** (head_dim / (head_dim - 2))
    return _inv_freq(head_dim, base).astype(np.float32), 1.0
  if method == "yarn":
    inv_freq = _yarn_inv_freq(head_dim, theta, factor, original_max_len,
                              beta_fast, beta_slow)
    return inv_freq.astype(np.float32), _yarn_attention_factor(factor)
  if method == "llama3":
    inv_freq = _llama3_inv_freq(head_dim, theta, factor, original_max_len,
                                low_freq_factor, high_freq_factor)
    return inv_freq.astype(np.float32), 1.0
  if seq_len is None:  # Hugging Face takes the length to be original_max_len.
    return _inv_freq(head_dim, theta).astype(np.float32), 1.0
  return _dynamic_ntk_inv_freq(head_dim, theta, factor, original_max_len,
                               seq_len), 1.0


def softmax_temperature(c: float, eval_len: int, train_len: int) -> float:
  """Attention-logit multiplier beta = 1 + c ln(eval_len / train_len), >= 1."""
  ratio = eval_len / train_len
  return 1.0 + c * math.log(ratio) if ratio > 1 else 1.0


def _check_arguments(head_dim, method, factor, original_max_len):
  if method not in METHODS:
    raise ValueError(
        f"unknown RoPE scaling method {method!r}: use one of {', '.join(METHODS)}")
  if head_dim <= 2 or head_dim % 2:
    raise ValueError(f"head_dim must be even and > 2, got {head_dim}")
  if factor < 1:
    raise ValueError(
        f"RoPE scaling factor must be >= 1 (eval_len / train_len), got {factor}")
  if method in ("yarn", "dynamic_ntk", "llama3") and original_max_len <= 0:
    raise ValueError(
        f"RoPE scaling {method!r} needs original_max_len (the training length)")


def _inv_freq(head_dim, base):
  """theta^(-2i/d) in float64; callers cast once at the end."""
  return base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _yarn_inv_freq(head_dim, theta, factor, original_max_len, beta_fast,
                   beta_slow):
  def pair_index_with_turns(turns):
    # The (fractional) pair index whose wavelength fits `turns` times into the
    # training length; higher indices turn fewer times.
    wavelength = original_max_len / turns
    return (head_dim * math.log(wavelength / (2 * math.pi))
            / (2 * math.log(theta)))

  low = max(math.floor(pair_index_with_turns(beta_fast)), 0)
  high = min(math.ceil(pair_index_with_turns(beta_slow)), head_dim - 1)
  if low == high:
    high += 0.001  # A step instead of a ramp, without dividing by zero.
  interpolated = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0, 1)
  inv_freq = _inv_freq(head_dim, theta)
  return inv_freq * (1 - interpolated) + inv_freq / factor * interpolated


def _llama3_inv_freq(head_dim, theta, factor, original_max_len, low_freq_factor,
                     high_freq_factor):
  inv_freq = _inv_freq(head_dim, theta)
  turns = original_max_len * inv_freq / (2 * math.pi)  # in the original context.
  blend = np.clip((turns - low_freq_factor) / (high_freq_factor - low_freq_factor), 0, 1)
  return blend * inv_freq + (1 - blend) * inv_freq / factor


def _yarn_attention_factor(factor):
  return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def _dynamic_ntk_inv_freq(head_dim, theta, factor, original_max_len, seq_len):
  length = jnp.asarray(seq_len, jnp.float32)
  ratio = jnp.where(length > original_max_len,
                    factor * length / original_max_len - (factor - 1), 1.0)
  base = theta * ratio ** (head_dim / (head_dim - 2))
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return (1.0 / base ** exponents).astype(jnp.float32)
