"""Memory and speed of attention kernels, forward + backward, against sequence length.

Memory is XLA's compiled figure (memory_analysis), so it is reported even for shapes
too large to run. Timing runs only when the compiled scratch fits under --max-run-gib.

  python -m benchmarks.attention_memory --lengths=4096,16384,65536
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax.model import kernels

GIB = 2**30


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--lengths', default='4096,16384,65536',
                      help='comma-separated sequence lengths')
  parser.add_argument('--impls', default='chunked,xla', help='comma-separated kernels')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--kv-heads', type=int, default=2)
  parser.add_argument('--head-dim', type=int, default=64)
  parser.add_argument('--chunk-size', type=int, default=512)
  parser.add_argument('--iters', type=int, default=2, help='timed steps after warmup')
  parser.add_argument('--max-run-gib', type=float, default=16.0,
                      help='skip timing when compiled scratch memory exceeds this')
  return parser.parse_args()


def _fwd_bwd(q, k, v, cotangent, *, impl, chunk_size):
  """Output and the grads of sum(output * cotangent), like one training step needs."""
  fn = functools.partial(kernels.attention, impl=impl, scale=q.shape[-1]**-0.5,
                         chunk_size=chunk_size)
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(cotangent)


def _shapes(args, seq_len):
  q = (args.batch, seq_len, args.heads, args.head_dim)
  kv = (args.batch, seq_len, args.kv_heads, args.head_dim)
  return q, kv, kv, q


def _measure(args, impl, seq_len):
  """One table row: compiled memory, and tokens/s unless memory rules the run out."""
  shapes = _shapes(args, seq_len)
  step = jax.jit(functools.partial(_fwd_bwd, impl=impl, chunk_size=args.chunk_size))
  compiled = step.lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile()
  memory = compiled.memory_analysis()
  row = dict(impl=impl, seq_len=seq_len, temp_gib=memory.temp_size_in_bytes / GIB,
             io_gib=(memory.argument_size_in_bytes + memory.output_size_in_bytes) / GIB)
  if row['temp_gib'] > args.max_run_gib:
    return row | dict(tokens_per_sec=None,
                      note=f'not run: scratch > {args.max_run_gib:g} GiB')
  rng = np.random.default_rng(0)
  inputs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  jax.block_until_ready(compiled(*inputs))  # Warmup.
  start = time.perf_counter()
  for _ in range(args.iters):
    jax.block_until_ready(compiled(*inputs))
  elapsed = time.perf_counter() - start
  return row | dict(tokens_per_sec=args.batch * seq_len * args.iters / elapsed, note='')


def _print_table(args, rows):
  print(f'attention forward+backward, float32, B={args.batch} H={args.heads} '
        f'K={args.kv_heads} D={args.head_dim} chunk={args.chunk_size}, causal, '
        f'backend={jax.default_backend()}')
  print('| impl | tokens | scratch GiB | args+out GiB | tokens/s | note |')
  print('|---|---:|---:|---:|---:|---|')
  for r in rows:
    speed = f"{r['tokens_per_sec']:,.0f}" if r['tokens_per_sec'] else '-'
    print(f"| {r['impl']} | {r['seq_len']:,} | {r['temp_gib']:.3f} | "
          f"{r['io_gib']:.3f} | {speed} | {r['note']} |")


def main():
  args = _parse_args()
  rows = []
  for seq_len in (int(s) for s in args.lengths.split(',')):
    for impl in args.impls.split(','):
      rows.append(_measure(args, impl, seq_len))
      print(rows[-1], flush=True)
  _print_table(args, rows)


if __name__ == '__main__':
  main()
