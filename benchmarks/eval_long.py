"""Time and memory of a long-context perplexity evaluation: chunked vs xla attention.

Evaluates a run's checkpoint at `--multiple` x its training length (the tiny config:
256 -> 2048 tokens) once per attention kernel, each in its own process so that the
peak resident memory (getrusage maxrss) belongs to that kernel alone. Also prints
XLA's compiled memory figures (memory_analysis) and the perplexity, which must agree.

  python -m benchmarks.eval_long --workdir=DIR [--multiple=8] [--impls=chunked,xla]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 2**20


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--multiple", type=float, default=8)
  parser.add_argument("--impls", default="chunked,xla", help="comma-separated kernels")
  parser.add_argument("--windows", type=int, default=4, help="windows evaluated")
  parser.add_argument("--batch", type=int, default=1, help="windows per forward pass")
  parser.add_argument("--impl", help=argparse.SUPPRESS)  # set in the child process.
  return parser.parse_args()


def _maxrss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # KiB on Linux.


def measure(args) -> dict:
  """One kernel, in this process: compile, warm up, then time the evaluation."""
  import jax  # pylint: disable=g-import-not-at-top
  from drope_jax import parallel  # pylint: disable=g-import-not-at-top
  from drope_jax.eval import heldout, loading, perplexity  # pylint: disable=g-import-not-at-top

  run = loading.load_run(args.workdir, args.step)
  length = round(args.multiple * run.train_len)
  stream = heldout.token_stream(run.config, args.windows * length + 1)
  windows = heldout.windows(stream, length, args.windows)
  graphdef = run.graphdef(args.impl)
  positional = run.positional()
  rss_loaded = _maxrss_mib()

  loss_fn = perplexity.make_loss_fn(graphdef, positional)
  inputs, targets, weights = next(perplexity.batches(windows, args.batch))
  started = time.perf_counter()
  with parallel.mesh_context(run.mesh):
    compiled = loss_fn.lower(run.params, inputs, targets, weights).compile()
  compile_s = time.perf_counter() - started
  memory = compiled.memory_analysis()

  perplexity.evaluate(graphdef, run.params, windows[:args.batch], positional=positional,
                      mesh=run.mesh, batch_size=args.batch)  # warm-up.
  started = time.perf_counter()
  result = perplexity.evaluate(graphdef, run.params, windows, positional=positional,
                               mesh=run.mesh, batch_size=args.batch)
  seconds = time.perf_counter() - started
  return dict(
      impl=args.impl, backend=jax.default_backend(), length=length,
      train_len=run.train_len, positional=positional.kind, windows=len(windows),
      batch=args.batch, perplexity=result.perplexity, compile_s=compile_s,
      eval_s=seconds, tokens_per_s=result.tokens / seconds,
      temp_mib=memory.temp_size_in_bytes / MIB,
      argument_mib=memory.argument_size_in_bytes / MIB,
      output_mib=memory.output_size_in_bytes / MIB,
      maxrss_loaded_mib=rss_loaded, maxrss_mib=_maxrss_mib())


def main():
  args = _parse_args()
  if args.impl:
    print(json.dumps(measure(args)), flush=True)
    return
  rows = []
  for impl in args.impls.split(","):
    command = [sys.executable, os.path.abspath(__file__), f"--impl={impl}",
               f"--workdir={args.workdir}", f"--multiple={args.multiple}",
               f"--windows={args.windows}", f"--batch={args.batch}"]
    if args.step is not None:
      command.append(f"--step={args.step}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=root, env=env)
    if done.returncode:
      sys.exit(f"{impl} failed:\n{done.stderr[-3000:]}")
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
  first = rows[0]
  print(f"{first['positional']} checkpoint of {args.workdir}: {first['windows']} windows "
        f"of {first['length']} tokens ({args.multiple:g}x {first['train_len']}), batch "
        f"{first['batch']}, {first['backend']}")
  print("| kernel | perplexity | compile s | eval s | tokens/s | XLA temp MiB | "
        "peak RSS MiB (after restore) |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['impl']} | {r['perplexity']:.4f} | {r['compile_s']:.1f} | "
          f"{r['eval_s']:.2f} | {r['tokens_per_s']:.0f} | {r['temp_mib']:.1f} | "
          f"{r['maxrss_mib']:.0f} ({r['maxrss_loaded_mib']:.0f}) |")


if __name__ == "__main__":
  main()
