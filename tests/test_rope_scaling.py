"""RoPE scaling against Hugging Face transformers' RoPE init functions."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from drope_jax.model import rope_scaling

HEAD_DIMS = (32, 64, 128)
THETAS = (1e4, 5e5, 1e6)
FACTORS = (2.0, 4.0, 8.0)
TRAIN_LEN = 1024
GRID = list(itertools.product(HEAD_DIMS, THETAS, FACTORS))


def hf_frequencies(head_dim, theta, rope_type, seq_len=None, **parameters):
  config = LlamaConfig(
      hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
      max_position_embeddings=TRAIN_LEN,
      rope_parameters=dict(rope_type=rope_type, rope_theta=theta, **parameters))
  inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](
      config, None, seq_len=seq_len)
  return inv_freq.numpy(), attention_factor


def assert_same(ours, reference):
  inv_freq, attention_factor = ours
  reference_inv_freq, reference_attention_factor = reference
  assert np.asarray(inv_freq).dtype == np.float32
  np.testing.assert_allclose(inv_freq, reference_inv_freq, rtol=2e-6)
  assert attention_factor == pytest.approx(reference_attention_factor, rel=1e-12)


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, THETAS)))
def test_none_is_plain_rope(head_dim, theta):
  reference = hf_frequencies(head_dim, theta, "linear", factor=1.0)
  assert_same(rope_scaling.rope_frequencies(head_dim, theta), reference)


@pytest.mark.parametrize("head_dim,theta,factor", GRID)
def test_pi_matches_hf_linear(head_dim, theta, factor):
  reference = hf_frequencies(head_dim, theta, "linear", factor=factor)
  ours = rope_scaling.rope_frequencies(head_dim, theta, "pi", factor)
  assert_same(ours, reference)


@pytest.mark.parametrize("head_dim,theta,factor", GRID)
def test_yarn_matches_hf_yarn(head_dim, theta, factor):
  reference = hf_frequencies(
      head_dim, theta, "yarn", factor=factor,
      original_max_position_embeddings=TRAIN_LEN, beta_fast=32.0, beta_slow=1.0)
  ours = rope_scaling.rope_frequencies(
      head_dim, theta, "yarn", factor, original_max_len=TRAIN_LEN)
  assert_same(ours, reference)
  assert ours[1] == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.parametrize("head_dim,theta,factor", GRID)
def test_llama3_matches_hf_llama3(head_dim, theta, factor):
  # Llama 3.1's own settings (low 1, high 4) and a narrower blend (2, 8).
  for low, high in ((1.0, 4.0), (2.0, 8.0)):
    reference = hf_frequencies(
        head_dim, theta, "llama3", factor=factor, low_freq_factor=low,
        high_freq_factor=high, original_max_position_embeddings=TRAIN_LEN // 4)
    ours = rope_scaling.rope_frequencies(
        head_dim, theta, "llama3", factor, original_max_len=TRAIN_LEN // 4,
        low_freq_factor=low, high_freq_factor=high)
    assert_same(ours, reference)


@pytest.mark.parametrize("head_dim,theta,factor", GRID)
def test_dynamic_ntk_matches_hf_dynamic(head_dim, theta, factor):
  for seq_len in (1, TRAIN_LEN, TRAIN_LEN + 1, 2 * TRAIN_LEN, 8 * TRAIN_LEN - 3):
    reference = hf_frequencies(
        head_dim, theta, "dynamic", seq_len=seq_len, factor=factor)
    ours = rope_scaling.rope_frequencies(
        head_dim, theta, "dynamic_ntk", factor, original_max_len=TRAIN_LEN,
        seq_len=seq_len)
    assert_same(ours, reference)


def test_dynamic_ntk_traces_the_length_under_jit():
  head_dim, theta, factor = 64, 1e6, 4.0

  @jax.jit
  def frequencies(seq_len):
    return rope_scaling.rope_frequencies(
        head_dim, theta, "dynamic_ntk", factor, original_max_len=TRAIN_LEN,
        seq_len=seq_len)[0]

  for seq_len in (512, 3 * TRAIN_LEN):
    reference, _ = hf_frequencies(
        head_dim, theta, "dynamic", seq_len=torch.tensor(seq_len), factor=factor)
    np.testing.assert_allclose(
        frequencies(jnp.int32(seq_len)), reference, rtol=2e-6)


@pytest.mark.parametrize("head_dim,theta,factor", GRID)
def test_ntk_closed_form_and_hf_dynamic_at_full_length(head_dim, theta, factor):
  ours = rope_scaling.rope_frequencies(head_dim, theta, "ntk", factor)
  base = theta * factor ** (head_dim / (head_dim - 2))
  closed_form = base ** (-np.arange(0, head_dim, 2) / head_dim)
  np.testing.assert_allclose(ours[0], closed_form, rtol=1e-6)
  # HF has no static NTK type; its dynamic type with factor 1 at length s * L0
  # uses the same base.
  reference = hf_frequencies(
      head_dim, theta, "dynamic", seq_len=int(factor * TRAIN_LEN), factor=1.0)
  assert_same(ours, reference)


@pytest.mark.parametrize("method", rope_scaling.METHODS)
def test_no_extension_is_identity(method):
  # Factor 1 at the training length: dynamic_ntk scales from the length, not
  # the factor, so it too is identity only up to the training length.
  ours = rope_scaling.rope_frequencies(
      64, 1e4, method, 1.0, original_max_len=TRAIN_LEN, seq_len=TRAIN_LEN)
  plain = rope_scaling.rope_frequencies(64, 1e4)
  np.testing.assert_allclose(ours[0], plain[0], rtol=2e-6)
  assert ours[1] == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="alibi"), "unknown RoPE scaling method 'alibi'"),
    (dict(method="pi", factor=0.5), "factor must be >= 1"),
    (dict(method="yarn", factor=2.0), "needs original_max_len"),
    (dict(method="dynamic_ntk", factor=2.0), "needs original_max_len"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rope_scaling.rope_frequencies(64, 1e4, **kwargs)


def test_softmax_temperature():
  assert rope_scaling.softmax_temperature(0.412, 1024, 1024) == 1.0
  assert rope_scaling.softmax_temperature(0.412, 512, 1024) == 1.0
  assert rope_scaling.softmax_temperature(0.412, 2048, 1024) == pytest.approx(
      1 + 0.412 * math.log(2))
  assert rope_scaling.softmax_temperature(0.103, 16384, 2048) == pytest.approx(
      1 + 0.103 * math.log(8))
