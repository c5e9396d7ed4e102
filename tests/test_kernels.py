"""Attention kernels against the xla reference (and xla against numpy): forward and grads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import config as config_lib
from drope_jax.model import kernels
from drope_jax.model import splash_blocks

SCALE = 0.35
FWD_TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)


def _packed_segment_ids(rng, B, S):
  """Random packed documents (ids from 1), some rows ending in padding (id 0)."""
  starts_BS = rng.random((B, S)) < 4 / S
  ids_BS = 1 + np.cumsum(starts_BS, axis=1)
  for b in range(0, B, 2):
    ids_BS[b, S - rng.integers(1, S // 4 + 1):] = 0
  return jnp.asarray(ids_BS, jnp.int32)


def _inputs(B, S, H, K, D, *, seed=0, segments=True):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  segment_ids = _packed_segment_ids(rng, B, S) if segments else None
  return (normal(B, S, H, D), normal(B, S, K, D), normal(B, S, K, D), segment_ids,
          normal(B, S, H, D))


def _fwd_and_grads(fn, q, k, v, cotangent):
  """fn(q, k, v) and the grads of sum(fn(q, k, v) * cotangent) wrt q, k, v."""
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(cotangent)


@functools.partial(jax.jit, static_argnames=('impl', 'chunk_size', 'splash_block_sizes',
                                             'splash_fused_bwd', 'mesh'))
def _run(q, k, v, segment_ids, cotangent, *, impl, chunk_size=512, splash_block_sizes='',
         splash_fused_bwd=True, mesh=None):
  fn = functools.partial(kernels.attention, impl=impl, scale=SCALE,
                         segment_ids=segment_ids, chunk_size=chunk_size,
                         splash_block_sizes=splash_block_sizes,
                         splash_fused_bwd=splash_fused_bwd, mesh=mesh)
  return _fwd_and_grads(fn, q, k, v, cotangent)


def _assert_matches_xla(q, k, v, segment_ids, cotangent, **kwargs):
  out, grads = _run(q, k, v, segment_ids, cotangent, **kwargs)
  ref_out, ref_grads = _run(q, k, v, segment_ids, cotangent, impl='xla')
  np.testing.assert_allclose(out, ref_out, **FWD_TOL)
  for name, grad, ref_grad in zip('qkv', grads, ref_grads):
    np.testing.assert_allclose(grad, ref_grad, err_msg=f'd{name}', **GRAD_TOL)


def _numpy_attention(q, k, v, segment_ids):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, S, H, _ = q.shape
  k = np.repeat(k, H // k.shape[2], axis=2)
  v = np.repeat(v, H // v.shape[2], axis=2)
  logits_BHST = np.einsum('bshd,bthd->bhst', q, k) * SCALE
  allowed_BST = np.tril(np.ones((S, S), bool))[None]
  if segment_ids is not None:
    ids = np.asarray(segment_ids)
    allowed_BST = allowed_BST & (ids[:, :, None] == ids[:, None, :])
  logits_BHST = np.where(allowed_BST[:, None], logits_BHST, -np.inf)
  probs_BHST = np.exp(logits_BHST - logits_BHST.max(-1, keepdims=True))
  probs_BHST /= probs_BHST.sum(-1, keepdims=True)
  return np.einsum('bhst,bthd->bshd', probs_BHST, v)


def _mesh():
  return jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


@pytest.mark.parametrize('segments', [False, True])
@pytest.mark.parametrize('num_kv_heads', [1, 2, 4])
def test_xla_matches_numpy(num_kv_heads, segments):
  q, k, v, segment_ids, cotangent = _inputs(2, 24, 4, num_kv_heads, 8, segments=segments)
  out, _ = _run(q, k, v, segment_ids, cotangent, impl='xla')
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, segment_ids), **FWD_TOL)


@pytest.mark.parametrize('num_kv_heads,seq_len,chunk_size', [
    (1, 37, 8), (2, 37, 8), (4, 37, 8),  # S not divisible by the chunk.
    (2, 64, 16), (4, 20, 512),  # Divisible; one chunk shorter than the chunk size.
])
def test_chunked_matches_xla(num_kv_heads, seq_len, chunk_size):
  args = _inputs(2, seq_len, 4, num_kv_heads, 8, seed=seq_len)
  _assert_matches_xla(*args, impl='chunked', chunk_size=chunk_size)


def test_chunked_without_segments_matches_xla():
  args = _inputs(2, 45, 4, 2, 8, segments=False)
  _assert_matches_xla(*args, impl='chunked', chunk_size=16)


def test_chunked_bf16_returns_bf16_close_to_float32():
  q, k, v, segment_ids, cotangent = _inputs(1, 40, 4, 2, 16)
  out, _ = _run(*(x.astype(jnp.bfloat16) for x in (q, k, v)), segment_ids,
                cotangent.astype(jnp.bfloat16), impl='chunked', chunk_size=16)
  ref, _ = _run(q, k, v, segment_ids, cotangent, impl='xla')
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=3e-2)


def test_chunked_8k_tokens():
  """Long context: rows spread over 8K tokens against a reference on those rows only."""
  S, rows = 8192, np.r_[0:128, 4000:4128, 8192 - 256:8192]
  q, k, v, segment_ids, cotangent = _inputs(1, S, 2, 1, 16)
  cotangent = jnp.zeros_like(cotangent).at[:, rows].set(cotangent[:, rows])
  out, (dq, dk, dv) = _run(q, k, v, segment_ids, cotangent, impl='chunked')

  mask_BRS = kernels._causal_mask(S, segment_ids)[:, rows]

  @jax.jit
  def reference(q_rows, k, v, cotangent_rows):
    fn = lambda q_rows, k, v: kernels.masked_attention(q_rows, k, v, scale=SCALE,
                                                       mask=mask_BRS)
    return _fwd_and_grads(fn, q_rows, k, v, cotangent_rows)

  ref_out, (ref_dq, ref_dk, ref_dv) = reference(q[:, rows], k, v, cotangent[:, rows])
  np.testing.assert_allclose(out[:, rows], ref_out, **FWD_TOL)
  np.testing.assert_allclose(dq[:, rows], ref_dq, **GRAD_TOL)
  np.testing.assert_allclose(dk, ref_dk, **GRAD_TOL)
  np.testing.assert_allclose(dv, ref_dv, **GRAD_TOL)


def test_chunked_memory_grows_linearly():
  """Compiled forward+backward scratch memory: x4 tokens must cost far less than x16."""

  def temp_bytes(S):
    q, k, v, segment_ids, cotangent = (
        jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _inputs(1, S, 2, 1, 16))
    compiled = _run.lower(q, k, v, segment_ids, cotangent, impl='chunked').compile()
    return compiled.memory_analysis().temp_size_in_bytes

  short, long = temp_bytes(4096), temp_bytes(16384)
  assert long < 6 * short, (short, long)
  assert long < 16384 * 16384 * 4 / 16, long  # Far below one f32 S x S matrix.


@pytest.mark.parametrize('num_kv_heads,segments', [
    (1, True), (2, True), (4, True), (2, False)])
def test_splash_interpret_matches_xla(num_kv_heads, segments):
  args = _inputs(2, 256, 4, num_kv_heads, 8, segments=segments)
  _assert_matches_xla(*args, impl='splash')


@pytest.mark.parametrize('num_kv_heads', [1, 2, 4])
def test_splash_sharded_matches_xla(num_kv_heads):
  args = _inputs(4, 256, 4, num_kv_heads, 8)
  _assert_matches_xla(*args, impl='splash', mesh=_mesh())


# 128-token blocks on 256 tokens: the fused backward sums partial dq over two kv blocks,
# and the causal diagonal splits blocks. `_HALF_COMPUTE` also splits each 256-token kv
# block into two compute steps (the kernel's dq scratch path).
_SMALL = 'q=128,kv=128,kv_compute=128,q_dkv=128,kv_dkv=128,kv_dkv_compute=128'
_HALF_COMPUTE = 'q=128,kv=256,kv_compute=128,q_dkv=128,kv_dkv=256,kv_dkv_compute=128'


@pytest.mark.parametrize('num_kv_heads,blocks', [
    (1, _SMALL), (2, _SMALL), (4, _SMALL), (2, _HALF_COMPUTE)])
def test_splash_fused_backward_with_small_blocks_matches_xla(num_kv_heads, blocks):
  args = _inputs(2, 256, 4, num_kv_heads, 8, seed=num_kv_heads)
  _assert_matches_xla(*args, impl='splash', splash_block_sizes=blocks)


@pytest.mark.parametrize('fused', [True, False])
def test_splash_backward_is_one_fused_kernel_unless_turned_off(fused):
  q, k, v, segment_ids, cotangent = _inputs(1, 256, 4, 2, 8)
  jaxpr = str(jax.make_jaxpr(functools.partial(_run, impl='splash',
                                               splash_fused_bwd=fused))(
      q, k, v, segment_ids, cotangent))
  assert 'splash_mha_fwd' in jaxpr and 'splash_mha_dkv' in jaxpr
  # Fused, dq comes out of the dkv kernel.
  assert ('splash_mha_dq' in jaxpr) == (not fused)


@pytest.mark.parametrize('num_kv_heads,segments', [(1, True), (2, False)])
def test_splash_unfused_backward_matches_xla(num_kv_heads, segments):
  args = _inputs(2, 256, 4, num_kv_heads, 8, segments=segments, seed=num_kv_heads)
  _assert_matches_xla(*args, impl='splash', splash_fused_bwd=False,
                      splash_block_sizes=_SMALL + ',q_dq=128,kv_dq=128')


@pytest.mark.parametrize('chip', sorted(splash_blocks.TABLE))
def test_splash_blocks_fit_every_length(chip):
  kind = {'default': 'cpu', 'tpu_v4': 'TPU v4', 'tpu_v5e': 'TPU v5 lite',
          'tpu_v5p': 'TPU v5', 'tpu_v6e': 'TPU v6 lite'}[chip]
  for seq_len in range(128, 32768 + 1, 128):
    blocks = splash_blocks.choose(kind, seq_len)
    for name in splash_blocks.NAMES:
      size = getattr(blocks, name)
      whole = getattr(blocks, name[:-len('_compute')]) if name.endswith('_compute') else seq_len
      assert size % 128 == 0 and whole % size == 0, (seq_len, blocks)


def test_splash_blocks_follow_chip_and_length():
  assert splash_blocks.choose('TPU v5', 8192).q > splash_blocks.choose('cpu', 8192).q
  assert splash_blocks.choose('TPU v6e', 8192) == splash_blocks.choose('TPU v6 lite', 8192)
  assert splash_blocks.choose('TPU v5', 256) == splash_blocks.choose('cpu', 256)
  assert splash_blocks.choose(None, 384).q == 384  # 512 does not divide 384.


def test_splash_block_override_replaces_only_the_named_sizes():
  table = splash_blocks.choose('TPU v5', 8192)
  blocks = splash_blocks.choose('TPU v5', 8192, ' q=256, kv_dkv_compute=128 ')
  assert (blocks.q, blocks.kv_dkv_compute) == (256, 128)
  assert (blocks.kv, blocks.q_dkv, blocks.kv_dkv) == (table.kv, table.q_dkv, table.kv_dkv)
  # A table size shrinks to divide an overridden kv block.
  assert splash_blocks.choose('TPU v5', 12288, 'kv=384').kv_compute == 384


@pytest.mark.parametrize('override,seq_len,match', [
    ('q=100', 1024, r'q=.100. must be a positive multiple of 128'),
    ('q=', 1024, 'must be a positive multiple of 128'),
    ('block_q=512', 1024, "'block_q' is not a block name"),
    ('q=128,q=256', 1024, 'is repeated'),
    ('q=512', 768, 'q=512 must divide the sequence length 768'),
    ('kv=512,kv_compute=384', 1024, 'kv_compute=384 must divide kv=512'),
])
def test_bad_splash_block_override_names_the_key(override, seq_len, match):
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    splash_blocks.choose('TPU v5', seq_len, override)
  assert 'model.splash_block_sizes' in str(error.value)


def test_config_validation_rejects_a_bad_splash_override():
  config = config_lib.base_config('rope')
  config.model.splash_block_sizes = 'q=512,kvv=512'
  with pytest.raises(config_lib.ConfigError, match="'kvv' is not a block name"):
    config_lib.validate(config)


def test_splash_bad_override_fails_at_the_kernel():
  q, k, v, _, _ = _inputs(1, 256, 4, 2, 8, segments=False)
  with pytest.raises(ValueError, match='model.splash_block_sizes'):
    kernels.attention(q, k, v, impl='splash', scale=SCALE, splash_block_sizes='q=512')


def test_splash_uses_ambient_mesh():
  q, k, v, segment_ids, cotangent = _inputs(4, 256, 4, 2, 8)
  with jax.set_mesh(_mesh()):
    jaxpr = jax.make_jaxpr(functools.partial(_run, impl='splash'))(
        q, k, v, segment_ids, cotangent)
    out, _ = _run(q, k, v, segment_ids, cotangent, impl='splash')
  assert 'shard_map' in str(jaxpr)
  ref = kernels.attention(q, k, v, impl='xla', scale=SCALE, segment_ids=segment_ids)
  np.testing.assert_allclose(out, ref, **FWD_TOL)


def test_splash_rejects_unaligned_length():
  q, k, v, _, _ = _inputs(1, 200, 4, 2, 8, segments=False)
  with pytest.raises(ValueError, match='divisible by 128'):
    kernels.attention(q, k, v, impl='splash', scale=SCALE)


def test_cudnn_on_cpu_raises_clear_error():
  q, k, v, _, _ = _inputs(1, 16, 4, 2, 8, segments=False)
  with pytest.raises(ValueError, match="impl='cudnn' needs a CUDA GPU"):
    kernels.attention(q, k, v, impl='cudnn', scale=SCALE)


def test_unknown_impl_raises():
  q, k, v, _, _ = _inputs(1, 16, 4, 2, 8, segments=False)
  with pytest.raises(ValueError, match='allowed: auto, xla, chunked, splash, cudnn'):
    kernels.attention(q, k, v, impl='flash', scale=SCALE)


def test_kv_heads_must_divide_query_heads():
  q, k, v, _, _ = _inputs(1, 16, 4, 3, 8, segments=False)
  with pytest.raises(ValueError, match='must divide query heads'):
    kernels.attention(q, k, v, impl='xla', scale=SCALE)


@pytest.mark.parametrize('platform,seq_len,dtype,expected', [
    ('cpu', 2048, jnp.float32, 'xla'),
    ('cpu', 2049, jnp.float32, 'chunked'),
    ('tpu', 2048, jnp.float32, 'splash'),
    ('tpu', 2000, jnp.float32, 'xla'),
    ('gpu', 4096, jnp.bfloat16, 'cudnn'),
    ('gpu', 4096, jnp.float32, 'chunked'),
])
def test_auto_choice(platform, seq_len, dtype, expected):
  q = jax.ShapeDtypeStruct((1, seq_len, 4, 64), dtype)
  assert kernels._resolve_impl('auto', q, None, platform) == expected


def test_splash_compiles_real_tpu_kernel_ahead_of_time():
  """A TPU mesh on this CPU host must get the Mosaic kernels, not interpret mode."""
  pytest.importorskip('libtpu')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc(
      platform='tpu', topology_name='v5e:2x2', chip_config_name='default',
      chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
  mesh = jax.sharding.Mesh(np.array(devices).reshape(1, 2, 2), ('data', 'fsdp', 'tensor'),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
  q_shape, kv_shape = (4, 512, 4, 128), (4, 512, 1, 128)  # MQA: kv heads repeated.
  shapes = [q_shape, kv_shape, kv_shape, (4, 512), q_shape]
  dtypes = [jnp.bfloat16] * 3 + [jnp.int32, jnp.bfloat16]
  args = [jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, dtypes)]
  with jax.set_mesh(mesh):
    hlo = _run.lower(*args, impl='auto').compile().as_text()
  assert 'tpu_custom_call' in hlo


def test_masked_attention_matches_xla_with_causal_mask():
  q, k, v, segment_ids, _ = _inputs(2, 24, 4, 2, 8)
  mask_BST = kernels._causal_mask(24, segment_ids)
  out = kernels.masked_attention(q, k, v, scale=SCALE, mask=mask_BST)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, segment_ids), **FWD_TOL)


def test_masked_attention_fully_masked_rows_are_zero():
  q, k, v, _, cotangent = _inputs(2, 8, 4, 1, 8, segments=False)
  mask_BST = jnp.tril(jnp.ones((2, 8, 8), bool)).at[:, 3].set(False)
  fn = lambda q, k, v: kernels.masked_attention(q, k, v, scale=SCALE, mask=mask_BST)
  out, grads = jax.jit(functools.partial(_fwd_and_grads, fn))(q, k, v, cotangent)
  np.testing.assert_array_equal(out[:, 3], 0.0)
  assert np.isfinite(out).all()
  for grad in grads:
    assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grads[0][:, 3], 0.0)


@pytest.mark.parametrize('fused', [True, False])
def test_the_model_key_chooses_the_splash_backward(fused):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from drope_jax.model.positional import Positional  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config('rope', attention='splash', splash_fused_bwd=fused,
                               head_dim=128, n_layers=1)
  model = helpers.build_model(config.model)
  graphdef, params = nnx.split(model)
  tokens_BS = jnp.zeros((1, 128), jnp.int32)

  def loss(params):
    return nnx.merge(graphdef, params)(tokens_BS, positional=Positional()).sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert 'splash_mha_dkv' in jaxpr and ('splash_mha_dq' in jaxpr) == (not fused)
