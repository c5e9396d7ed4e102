"""Causal self-attention kernels behind one function.

One layout everywhere: q [B, S, H, D]; k, v [B, S, K, D] where K divides H (GQA).
Query head h reads kv head h // (H // K), the grouping splash attention uses too,
so every backend agrees on which query heads share a kv head.

Backends:
  xla      einsum + mask + softmax; the reference. Memory quadratic in S.
  chunked  pure-JAX flash attention (online softmax over blocks, custom VJP);
           memory linear in S. For long evaluation where no fused kernel exists.
  splash   TPU Pallas splash attention (interpret mode elsewhere, for tests).
  cudnn    cuDNN fused attention through jax.nn.dot_product_attention (GPU).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from drope_jax import parallel
from drope_jax.model import splash_blocks

IMPLS = ('auto', 'xla', 'chunked', 'splash', 'cudnn')

# Finite, so that a row with no allowed key yet never computes inf - inf.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# Above this length the xla kernel's S x S logits dominate memory on CPU.
XLA_MAX_LEN = 2048


def attention(q, k, v, *, impl: str = 'auto', scale: float, segment_ids=None,
              chunk_size: int = 512, splash_block_sizes: str = '',
              splash_fused_bwd: bool = True, mesh=None):
  """Causal self-attention. q: [B, S, H, D]; k, v: [B, S, K, D] with K dividing H (GQA; K=1 is MQA).

  segment_ids: optional int32 [B, S]; tokens attend only within equal ids (ids are >=0;
    0 = padding, treated as its own segment).
  scale: multiplies q·k logits (callers pass temperature/sqrt(D); kernels must not add
    their own scaling). A traced scale is applied to q instead.
  impl: auto | xla | chunked | splash | cudnn. auto: splash on TPU, cudnn on GPU, xla on
    CPU when S <= 2048 else chunked. Where splash or cudnn cannot take the call (splash:
    S % 128 != 0; cudnn: segment ids, dtype not bf16/fp16, D % 8 != 0 or D > 128), auto
    falls back to the CPU rule.
  splash_block_sizes: overrides of the splash block-size table (model.splash_block_sizes,
    see splash_blocks); '' = the table's sizes for this chip and length.
  splash_fused_bwd: dq, dk and dv from one backward kernel (model.splash_fused_bwd);
    False: dq from a kernel of its own.
  mesh: optional jax.sharding.Mesh with axes ('data','fsdp','tensor'); splash runs inside
    jax.shard_map over batch (data+fsdp) and heads (tensor). If None, use the ambient mesh
    from jax.sharding.get_abstract_mesh() if it is non-empty, else run unsharded.
  Returns [B, S, H, D] in q.dtype; softmax computed in float32.
  """
  _check_shapes(q, k, v, segment_ids)
  if not isinstance(scale, (int, float)):
    # A traced scale (a temperature being fitted) goes into q: every kernel below
    # takes a static one.
    q, scale = (q.astype(jnp.float32) * scale).astype(q.dtype), 1.0
  device = _target_device(mesh)
  platform = device.platform
  impl = _resolve_impl(impl, q, segment_ids, platform)
  if impl == 'xla':
    # Causal rows always allow their own token: none is fully masked.
    mask_BST = _causal_mask(q.shape[1], segment_ids)
    return _softmax_attention(q, k, v, scale=scale, mask=mask_BST).astype(q.dtype)
  if impl == 'chunked':
    return _chunked_attention(q, k, v, segment_ids, scale=scale,
                              chunk_size=chunk_size)
  if impl == 'splash':
    return _splash_attention(q, k, v, segment_ids, scale=scale, mesh=mesh, device=device,
                             block_sizes=splash_block_sizes, fused_bwd=splash_fused_bwd)
  return _cudnn_attention(q, k, v, segment_ids, scale=scale, platform=platform)


def masked_attention(q, k, v, *, scale: float, mask):
  """Reference attention with an explicit boolean mask [B, S, T] (True = may attend).

  q: [B, S, H, D]; k, v: [B, T, K, D]. Used by KV-cache decoding. Rows with no allowed
  key produce zeros, not NaN.
  """
  out_BSHD = _softmax_attention(q, k, v, scale=scale, mask=mask)
  # A fully masked row softmaxes to uniform; zero it instead.
  return jnp.where(mask.any(axis=-1)[:, :, None, None], out_BSHD, 0.0).astype(q.dtype)


def _softmax_attention(q, k, v, *, scale: float, mask):
  """masked_attention without its care for fully masked rows: [B, S, H, D] float32.

  Heads go first and each kv head's G query heads stack into one [M = G*S, D] matrix,
  so both products are plain batched matmuls: on CPU ~12% faster, forward and
  backward, than the equivalent einsums, which XLA feeds through transposing copies.
  """
  B, S, H, D = q.shape
  T, K = k.shape[1], k.shape[2]
  G = H // K
  q_BKMD = q.reshape(B, S, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * S, D)
  logits_BKMT = jnp.matmul(q_BKMD, k.transpose(0, 2, 3, 1),
                           preferred_element_type=jnp.float32) * scale
  logits_BKGST = jnp.where(mask[:, None, None], logits_BKMT.reshape(B, K, G, S, T),
                           _MASK_VALUE)
  probs_BKMT = jax.nn.softmax(logits_BKGST, axis=-1).reshape(B, K, G * S, T)
  out_BKMD = jnp.matmul(probs_BKMT.astype(v.dtype), v.transpose(0, 2, 1, 3),
                        preferred_element_type=jnp.float32)
  return out_BKMD.reshape(B, K, G, S, D).transpose(0, 3, 1, 2, 4).reshape(B, S, H, D)


def _check_shapes(q, k, v, segment_ids):
  B, S, H, D = q.shape
  if k.shape != v.shape or k.shape[:2] != (B, S) or k.shape[3] != D:
    raise ValueError(f'attention: k {k.shape} and v {v.shape} must be [B, S, K, D] '
                     f'matching q {q.shape}.')
  if H % k.shape[2]:
    raise ValueError(f'attention: kv heads ({k.shape[2]}) must divide query heads '
                     f'({H}).')
  if segment_ids is not None and segment_ids.shape != (B, S):
    raise ValueError(f'attention: segment_ids {segment_ids.shape} must be [B, S] = '
                     f'{(B, S)}.')


def _target_device(mesh):
  """The device attention runs on (its `platform` and `device_kind`): the mesh's if
  known, else the default backend's first.

  A mesh of TPU device descriptions on a CPU host (ahead-of-time compilation) must get
  the real TPU kernels, so the mesh wins over jax.default_backend().
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_mesh.abstract_device
  return device if device is not None else jax.devices()[0]


def _resolve_impl(impl, q, segment_ids, platform):
  """Maps 'auto' to a concrete backend for this platform and shape."""
  if impl not in IMPLS:
    raise ValueError(f'attention: unknown impl {impl!r}; allowed: {", ".join(IMPLS)}.')
  if impl != 'auto':
    return impl
  S, D = q.shape[1], q.shape[3]
  if platform == 'tpu' and S % splash_blocks.LANES == 0:
    return 'splash'
  if platform == 'gpu' and _cudnn_supports(q.dtype, D, segment_ids):
    return 'cudnn'
  return 'xla' if S <= XLA_MAX_LEN else 'chunked'


def _causal_mask(S, segment_ids):
  """[B or 1, S, S] boolean: causal, and within one segment if ids are given."""
  mask_1SS = jnp.tril(jnp.ones((S, S), dtype=bool))[None]
  if segment_ids is None:
    return mask_1SS
  return mask_1SS & (segment_ids[:, :, None] == segment_ids[:, None, :])


# ----------------------------------------------------------------------------------------
# chunked: flash attention in pure JAX.
#
# Arrays are split into N blocks of C tokens, block index first (so loops can index
# blocks) and heads before tokens (so every block product is a plain batched matmul):
# q [N, B, K, G, C, D] (G = H // K query heads per kv head), k/v [N, B, K, C, D],
# segment ids [N, B, C] or None. Causality means query block i only visits key blocks
# j <= i, so loops run over that triangle. The backward recomputes logits block by
# block from the saved log-sum-exp, so nothing S x S is ever stored.
# ----------------------------------------------------------------------------------------


def _chunked_attention(q, k, v, segment_ids, *, scale, chunk_size):
  B, S, H, D = q.shape
  K = k.shape[2]
  C = min(chunk_size, S)
  N = -(-S // C)
  # Padded keys sit after every real query, so the causal mask already hides them.
  q_NBKGCD = jnp.einsum('nbckgd->nbkgcd',
                        _to_blocks(q.reshape(B, S, K, H // K, D), N, C))
  k_NBKCD = jnp.einsum('nbckd->nbkcd', _to_blocks(k, N, C))
  v_NBKCD = jnp.einsum('nbckd->nbkcd', _to_blocks(v, N, C))
  seg_NBC = None if segment_ids is None else _to_blocks(segment_ids, N, C)
  out_NBKGCD = _flash(q_NBKGCD, k_NBKCD, v_NBKCD, seg_NBC, scale)
  out_BSKGD = jnp.einsum('nbkgcd->bnckgd', out_NBKGCD).reshape(B, N * C, K, H // K, D)
  return out_BSKGD[:, :S].reshape(B, S, H, D)


def _to_blocks(x, N, C):
  """[B, S, ...] -> [N, B, C, ...], zero-padding S up to N * C."""
  pad = [(0, 0), (0, N * C - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
  x = jnp.pad(x, pad)
  return jnp.moveaxis(x.reshape(x.shape[0], N, C, *x.shape[2:]), 1, 0)


def _block_logits(q_BKGCD, k_BKCD, seg_NBC, i, j, scale, *, diagonal: bool):
  """Masked float32 logits [B, K, G, Cq, Ck] of query block i against key block j.

  Only the diagonal block (i == j) needs the causal mask: key blocks before it are
  wholly visible. Segment ids (None: one segment) mask every block.
  """
  C = q_BKGCD.shape[3]
  logits = jnp.einsum('bkgqd,bktd->bkgqt', q_BKGCD, k_BKCD,
                      preferred_element_type=jnp.float32) * scale
  mask_BQT = None
  if diagonal:
    mask_BQT = jnp.tril(jnp.ones((C, C), bool))[None]
  if seg_NBC is not None:
    same_BQT = seg_NBC[i][:, :, None] == seg_NBC[j][:, None, :]
    mask_BQT = same_BQT if mask_BQT is None else mask_BQT & same_BQT
  if mask_BQT is None:
    return logits
  return jnp.where(mask_BQT[:, None, None], logits, _MASK_VALUE)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, scale):
  return _flash_fwd(q, k, v, seg, scale)[0]


def _flash_fwd(q_NBKGCD, k_NBKCD, v_NBKCD, seg_NBC, scale):
  """Online softmax: one pass over key blocks per query block, the diagonal last."""
  N, B, K, G, C, D = q_NBKGCD.shape

  def query_block(i):
    q_i = q_NBKGCD[i]

    def key_block(j, carry, diagonal=False):
      acc_BKGCD, denom_BKGC, max_BKGC = carry
      logits = _block_logits(q_i, k_NBKCD[j], seg_NBC, i, j, scale, diagonal=diagonal)
      new_max = jnp.maximum(max_BKGC, logits.max(axis=-1))
      # While a row has seen only masked keys, new_max is _MASK_VALUE and masked
      # entries weigh 1; the first allowed key (the diagonal is always one) rescales
      # that by exp(_MASK_VALUE - real) = 0.
      probs = jnp.exp(logits - new_max[..., None])
      rescale = jnp.exp(max_BKGC - new_max)
      denom_BKGC = rescale * denom_BKGC + probs.sum(axis=-1)
      acc_BKGCD = rescale[..., None] * acc_BKGCD + jnp.einsum(
          'bkgqt,bktd->bkgqd', probs.astype(v_NBKCD.dtype), v_NBKCD[j],
          preferred_element_type=jnp.float32)
      return acc_BKGCD, denom_BKGC, new_max

    init = (jnp.zeros((B, K, G, C, D), jnp.float32),
            jnp.zeros((B, K, G, C), jnp.float32),
            jnp.full((B, K, G, C), _MASK_VALUE, jnp.float32))
    carry = jax.lax.fori_loop(0, i, key_block, init)
    acc_BKGCD, denom_BKGC, max_BKGC = key_block(i, carry, diagonal=True)
    out_BKGCD = (acc_BKGCD / denom_BKGC[..., None]).astype(q_NBKGCD.dtype)
    return out_BKGCD, max_BKGC + jnp.log(denom_BKGC)

  out_NBKGCD, lse_NBKGC = jax.lax.map(query_block, jnp.arange(N))
  return out_NBKGCD, (q_NBKGCD, k_NBKCD, v_NBKCD, seg_NBC, out_NBKGCD, lse_NBKGC)


def _flash_bwd(scale, residuals, dout_NBKGCD):
  """FlashAttention-2 backward: per key block, sweep the query blocks that see it (the
  diagonal first)."""
  q_NBKGCD, k_NBKCD, v_NBKCD, seg_NBC, out_NBKGCD, lse_NBKGC = residuals
  N = q_NBKGCD.shape[0]
  # rowsum(dP * P) = rowsum(dout * out), per query and head.
  delta_NBKGC = jnp.einsum('nbkgcd,nbkgcd->nbkgc', dout_NBKGCD.astype(jnp.float32),
                           out_NBKGCD.astype(jnp.float32))

  def key_block(dq_NBKGCD, j):
    k_j, v_j = k_NBKCD[j], v_NBKCD[j]

    def query_block(i, carry, diagonal=False):
      dq_NBKGCD, dk_BKCD, dv_BKCD = carry
      q_i, dout_i = q_NBKGCD[i], dout_NBKGCD[i]
      logits = _block_logits(q_i, k_j, seg_NBC, i, j, scale, diagonal=diagonal)
      probs = jnp.exp(logits - lse_NBKGC[i][..., None])
      dv_BKCD += jnp.einsum('bkgqt,bkgqd->bktd', probs.astype(dout_i.dtype), dout_i,
                            preferred_element_type=jnp.float32)
      dprobs = jnp.einsum('bkgqd,bktd->bkgqt', dout_i, v_j,
                          preferred_element_type=jnp.float32)
      dlogits = probs * (dprobs - delta_NBKGC[i][..., None]) * scale
      dk_BKCD += jnp.einsum('bkgqt,bkgqd->bktd', dlogits.astype(q_i.dtype), q_i,
                            preferred_element_type=jnp.float32)
      dq_NBKGCD = dq_NBKGCD.at[i].add(jnp.einsum(
          'bkgqt,bktd->bkgqd', dlogits.astype(k_j.dtype), k_j,
          preferred_element_type=jnp.float32))
      return dq_NBKGCD, dk_BKCD, dv_BKCD

    zeros = jnp.zeros(k_j.shape, jnp.float32)
    carry = query_block(j, (dq_NBKGCD, zeros, zeros), diagonal=True)
    dq_NBKGCD, dk_BKCD, dv_BKCD = jax.lax.fori_loop(j + 1, N, query_block, carry)
    return dq_NBKGCD, (dk_BKCD, dv_BKCD)

  dq_NBKGCD, (dk_NBKCD, dv_NBKCD) = jax.lax.scan(
      key_block, jnp.zeros(q_NBKGCD.shape, jnp.float32), jnp.arange(N))
  return (dq_NBKGCD.astype(q_NBKGCD.dtype), dk_NBKCD.astype(k_NBKCD.dtype),
          dv_NBKCD.astype(v_NBKCD.dtype), None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------
# splash: TPU Pallas kernel; interpret mode on other platforms (tests).
# ----------------------------------------------------------------------------------------


def _splash_attention(q, k, v, segment_ids, *, scale, mesh, device, block_sizes,
                      fused_bwd):
  S = q.shape[1]
  if S % splash_blocks.LANES:
    raise ValueError(f"attention impl='splash' needs a sequence length divisible by "
                     f"{splash_blocks.LANES}, got {S}; use impl='xla' or 'chunked'.")
  # The kernel does not scale logits; scale in float32 so bf16 q keeps scale exact.
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  blocks = splash_blocks.choose(device.device_kind, S, block_sizes)
  local = functools.partial(_splash_local, blocks=blocks, fused_bwd=fused_bwd,
                            interpret=device.platform != 'tpu')
  mesh = _resolve_mesh(mesh)
  if mesh is None:
    return local(q, k, v, segment_ids)
  return _splash_sharded(local, q, k, v, segment_ids, mesh)


def _resolve_mesh(mesh):
  """The mesh to shard over, or None to run on local arrays as they are."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    # Inside an enclosing shard_map the arrays are already per-device.
    if mesh.empty or mesh.are_all_axes_manual:
      return None
  return mesh if mesh.size > 1 else None


def _splash_sharded(local, q, k, v, segment_ids, mesh):
  """Runs `local` per device: batch over data + fsdp, heads over tensor."""
  B, _, H, _ = q.shape
  batch_axes, head_axes = (parallel.mesh_axes(n, mesh) for n in ('batch', 'act_heads'))
  batch_shards, head_shards = (parallel.shards(n, mesh) for n in ('batch', 'act_heads'))
  if B % batch_shards or H % head_shards:
    raise ValueError(
        f"attention impl='splash': batch {B} must divide by {batch_axes} = "
        f"{batch_shards} and heads {H} by {head_axes} = {head_shards}.")
  # Repeat kv heads up to lcm(K, head_shards) so each device holds exactly the kv heads
  # its query heads read (a full replica for MQA); grads sum over the copies.
  K = k.shape[2]
  repeats = math.lcm(K, head_shards) // K
  k = jnp.repeat(k, repeats, axis=2)
  v = jnp.repeat(v, repeats, axis=2)
  qkv_spec = P(batch_axes, None, head_axes or None, None)
  args, specs = (q, k, v), (qkv_spec,) * 3
  if segment_ids is not None:
    args, specs = args + (segment_ids,), specs + (P(batch_axes, None),)
  # check_vma=False: the Pallas call carries no varying-axes annotations.
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=qkv_spec,
                       check_vma=False)(*args)


def _splash():
  """The Pallas splash module, imported on first use: importing it costs every process
  0.2 s (a restart's import time) and only splash runs need it."""
  from jax.experimental.pallas.ops.tpu import splash_attention  # pylint: disable=g-import-not-at-top
  return splash_attention


def _splash_local(q_BSHD, k_BSKD, v_BSKD, segment_ids=None, *, blocks, fused_bwd,
                  interpret):
  """Splash on arrays local to one device; q is pre-scaled."""
  _, S, H, _ = q_BSHD.shape
  kernel = _make_splash_kernel(H, S, blocks, fused_bwd, interpret)
  q_BHSD = jnp.swapaxes(q_BSHD, 1, 2)
  k_BKSD = jnp.swapaxes(k_BSKD, 1, 2)
  v_BKSD = jnp.swapaxes(v_BSKD, 1, 2)
  if segment_ids is None:
    out_BHSD = jax.vmap(kernel)(q_BHSD, k_BKSD, v_BKSD)
  else:
    seg = _splash().SegmentIds(q=segment_ids, kv=segment_ids)
    out_BHSD = jax.vmap(kernel)(q_BHSD, k_BKSD, v_BKSD, seg)
  return jnp.swapaxes(out_BHSD, 1, 2)


def _make_splash_kernel(num_heads, seq_len, blocks, fused_bwd, interpret):
  """A causal splash kernel for one example [H, S, D]; its GQA maps h -> h // (H/K).

  The fused backward computes dq, dk and dv in one kernel (one pass over the blocks
  instead of two), at the cost of S / kv_dkv partial dq copies summed afterwards;
  unfused, dq has a kernel of its own.
  """
  splash = _splash()
  block_sizes = splash.BlockSizes(
      block_q=blocks.q, block_kv=blocks.kv, block_kv_compute=blocks.kv_compute,
      block_q_dkv=blocks.q_dkv, block_kv_dkv=blocks.kv_dkv,
      block_kv_dkv_compute=blocks.kv_dkv_compute,
      block_q_dq=None if fused_bwd else blocks.q_dq,
      block_kv_dq=None if fused_bwd else blocks.kv_dq, use_fused_bwd_kernel=fused_bwd)
  mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * num_heads)
  return splash.make_splash_mha(
      mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1,
      interpret=interpret)


# ----------------------------------------------------------------------------------------
# cudnn: fused attention on NVIDIA GPUs.
# ----------------------------------------------------------------------------------------


def _cudnn_supports(dtype, head_dim, segment_ids):
  # jax.nn.dot_product_attention takes no segment ids; cuDNN wants 16-bit inputs and a
  # head dim that is a multiple of 8 and at most 128 (256 on Hopper).
  return (segment_ids is None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128)


def _cudnn_attention(q, k, v, segment_ids, *, scale, platform):
  if platform != 'gpu':
    raise ValueError(f"attention impl='cudnn' needs a CUDA GPU; this platform is "
                     f"{platform!r}. Use impl='auto', 'xla' or 'chunked'.")
  if segment_ids is not None:
    raise ValueError(
        f"attention impl='cudnn' cannot mask segments: jax.nn.dot_product_attention in "
        f"jax {jax.__version__} takes no segment ids. Use impl='xla' or 'chunked'.")
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True,
                                      implementation='cudnn')
