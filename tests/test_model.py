"""The transformer's positional behaviour, causality and grouped-query attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax.model.positional import Positional
from tests import helpers

ROPE = Positional("rope", theta=10_000.0)
NOPE = Positional("nope")


def _tokens(batch=2, seq=16, vocab=64, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, seq), 0, vocab)


@pytest.mark.parametrize("positional", [ROPE, NOPE], ids=["rope", "nope"])
def test_changing_a_token_never_changes_earlier_logits(positional):
  model = helpers.build_model(helpers.tiny_config().model)
  tokens = _tokens()
  t = 9
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % 64)
  before, after = model(tokens, positional=positional), model(changed, positional=positional)
  np.testing.assert_allclose(before[:, :t], after[:, :t], atol=1e-6)
  assert np.abs(before[:, t:] - after[:, t:]).max() > 1e-3


def test_rope_logits_are_invariant_to_shifting_all_positions():
  model = helpers.build_model(helpers.tiny_config().model)
  tokens = _tokens()
  positions = jnp.broadcast_to(jnp.arange(16), tokens.shape)
  base = model(tokens, positional=ROPE, positions_BS=positions)
  shifted = model(tokens, positional=ROPE, positions_BS=positions + 1000)
  np.testing.assert_allclose(base, shifted, atol=2e-4)


def test_rope_logits_depend_on_relative_positions():
  model = helpers.build_model(helpers.tiny_config().model)
  tokens = _tokens()
  positions = jnp.broadcast_to(jnp.arange(16), tokens.shape)
  base = model(tokens, positional=ROPE, positions_BS=positions)
  stretched = model(tokens, positional=ROPE, positions_BS=positions * 2)
  assert np.abs(base - stretched).max() > 1e-3


def test_one_layer_nope_is_blind_to_the_order_of_earlier_tokens_and_rope_is_not():
  # A large init makes attention far from uniform, so order effects are visible.
  model = helpers.build_model(helpers.tiny_config(n_layers=1, init_std=0.3).model)
  tokens = _tokens(batch=1, seq=12)
  perm = np.concatenate([np.random.default_rng(0).permutation(11), [11]])
  permuted = tokens[:, perm]
  nope_last = lambda x: model(x, positional=NOPE)[:, -1]
  rope_last = lambda x: model(x, positional=ROPE)[:, -1]
  np.testing.assert_allclose(nope_last(tokens), nope_last(permuted), atol=1e-5)
  assert np.abs(rope_last(tokens) - rope_last(permuted)).max() > 1e-3


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_heads():
  gqa_config = helpers.tiny_config(n_heads=4, n_kv_heads=2).model
  gqa = helpers.build_model(gqa_config)
  mha = helpers.build_model(helpers.tiny_config(n_heads=4, n_kv_heads=4).model, seed=1)
  gqa_block, mha_block = gqa.blocks, mha.blocks  # every layer: [L, ...] parameters.
  for name in ("k_EKD", "v_EKD"):
    kv_LEKD = getattr(gqa_block.attn, name)[...]
    getattr(mha_block.attn, name)[...] = jnp.repeat(kv_LEKD, 2, axis=2)
  mha_block.attn.q_EHD[...] = gqa_block.attn.q_EHD[...]
  mha_block.attn.out_HDE[...] = gqa_block.attn.out_HDE[...]
  for part in ("attn_norm", "mlp_norm", "mlp"):
    _copy_params(getattr(gqa_block, part), getattr(mha_block, part))
  _copy_params(gqa.embed, mha.embed)
  _copy_params(gqa.final_norm, mha.final_norm)
  tokens = _tokens()
  for positional in (ROPE, NOPE):
    np.testing.assert_allclose(gqa(tokens, positional=positional),
                               mha(tokens, positional=positional), atol=1e-5)


def _copy_params(src, dst):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  nnx.update(dst, nnx.state(src, nnx.Param))


def test_segment_ids_keep_packed_documents_apart():
  model = helpers.build_model(helpers.tiny_config().model)
  doc_a, doc_b = _tokens(batch=1, seq=8, seed=1), _tokens(batch=1, seq=8, seed=2)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segments = jnp.array([[1] * 8 + [2] * 8])
  positions = jnp.array([list(range(8)) * 2])
  logits = model(packed, positional=ROPE, positions_BS=positions, segment_ids_BS=segments)
  alone = model(doc_b, positional=ROPE)
  np.testing.assert_allclose(logits[:, 8:], alone, atol=1e-5)


@pytest.mark.parametrize("qk_norm", ["q", "k", "qk"])
def test_qk_norm_adds_unit_gains_over_the_whole_projection(qk_norm):
  model = helpers.build_model(helpers.tiny_config(qk_norm=qk_norm).model)
  attn = model.layer(0).attn
  assert (attn.q_norm is not None) == ("q" in qk_norm)
  assert (attn.k_norm is not None) == ("k" in qk_norm)
  for norm in (attn.q_norm, attn.k_norm):
    if norm is not None:
      assert norm.scale.ndim == 2 and np.all(norm.scale[...] == 1.0)
  assert np.isfinite(model(_tokens(), positional=ROPE)).all()


def test_bfloat16_compute_keeps_float32_master_weights():
  model = helpers.build_model(helpers.tiny_config(dtype="bfloat16").model)
  assert model.blocks.attn.q_EHD[...].dtype == jnp.float32
  logits = model(_tokens(), positional=ROPE)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


def test_untied_embeddings_have_their_own_output_projection():
  model = helpers.build_model(helpers.tiny_config(tie_embeddings=False).model)
  assert model.unembed_EV is not None
  assert model(_tokens(), positional=NOPE).shape == (2, 16, 64)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_equal_unrolled_layers_in_logits_and_gradients(remat):
  """One parameter layout, two loops over it: lax.scan and the unrolled Python loop."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(remat=remat, qk_norm="qk").model
  scanned = helpers.build_model(config)
  config.scan_layers = False
  unrolled = helpers.build_model(config)
  params = nnx.state(scanned, nnx.Param)
  nnx.update(unrolled, params)  # the same arrays: init does not depend on the loop.
  tokens = _tokens()

  def logits_loss_and_grads(model):
    graphdef, _ = nnx.split(model, nnx.Param)
    logits = lambda p: nnx.merge(graphdef, p)(tokens, positional=ROPE)
    loss = lambda p: jnp.mean(logits(p) ** 2)
    return jax.jit(logits)(params), jax.jit(jax.value_and_grad(loss))(params)

  (logits_s, (loss_s, grads_s)), (logits_u, (loss_u, grads_u)) = map(
      logits_loss_and_grads, (scanned, unrolled))
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  jax.tree.map(lambda s, u: np.testing.assert_allclose(s, u, rtol=1e-4, atol=1e-7),
               grads_s, grads_u)


def test_chunked_cross_entropy_equals_the_whole_sequence_at_once():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from drope_jax import train_step  # pylint: disable=g-import-not-at-top
  model = helpers.build_model(helpers.tiny_config().model)
  tokens = _tokens(seq=32)
  targets = jnp.roll(tokens, -1, axis=1)
  weights = jax.random.uniform(jax.random.key(3), tokens.shape)
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params, chunk):
    model = nnx.merge(graphdef, params)
    x_BSE = model.hidden(tokens, positional=ROPE)
    return train_step.cross_entropy_sum(model.logits, x_BSE, targets, weights, chunk)

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  whole, whole_grads = value_and_grad(params, 0)
  for chunk in (8, 16):  # 4 and 2 chunks, each recomputed in the backward.
    chunked, chunked_grads = value_and_grad(params, chunk)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    # Sums in another order: float32 rounding apart (gradients are ~1e-2).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
                 chunked_grads, whole_grads)
