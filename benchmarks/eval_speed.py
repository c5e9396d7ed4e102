r"""Long-context evaluation speed: `evaluate --evals=perplexity` against transformers.

  python -m benchmarks.eval_speed --workdir=W --gguf=MODEL.gguf --eval_data=BOOK \
      [--out=benchmarks/results/eval_speed]

W is the GGUF imported with `python -m drope_jax.hf import` (SmolLM2-135M: context
8,192). Whole command against whole command, each in a process of its own and timed
from its start to its exit (imports, load, compiles and scoring):
  drope_jax     python -m drope_jax.evaluate --evals=perplexity --lengths=1,2
                --methods=none on the first 2x context tokens of BOOK (1x: two windows,
                2x: one); it writes W/eval/perplexity_rope.json as usual.
  transformers  the same model from the GGUF in transformers (sdpa, float32) on the
                same windows with the same loss (benchmarks/in_the_wild_native.py).
Prints tokens/s of each (tokens scored at both lengths over the whole command's
seconds), the ratio, the perplexities side by side, and the host's CPU flags. The goal
(issue 20): drope_jax at or above transformers.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import host


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--gguf", required=True)
  parser.add_argument("--eval_data", required=True)
  parser.add_argument("--out", default="benchmarks/results/eval_speed")
  parser.add_argument("--transformers_json", help=argparse.SUPPRESS)  # the child's.
  return parser.parse_args()


def _timed(*command: str) -> float:
  started = time.perf_counter()
  subprocess.run([sys.executable, *command], check=True)
  return time.perf_counter() - started


def main():
  args = _parse_args()
  if args.transformers_json:  # the child process: transformers alone.
    from benchmarks import in_the_wild_native  # pylint: disable=g-import-not-at-top
    result = in_the_wild_native.transformers_reference(
        args.gguf, args.workdir, args.eval_data, methods=("rope",))
    with open(args.transformers_json, "w") as f:
      json.dump(result, f, indent=1)
    return
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.workdir, "config.json")) as f:
    context = json.load(f)["train"]["seq_len"]
  ours_s = _timed("-m", "drope_jax.evaluate", f"--workdir={args.workdir}",
                  f"--eval_data={args.eval_data}", f"--eval_tokens={2 * context}",
                  f"--batch_tokens={context}", "--evals=perplexity", "--lengths=1,2",
                  "--methods=none")
  reference = os.path.join(args.out, "transformers.json")
  theirs_s = _timed("-m", "benchmarks.eval_speed", f"--workdir={args.workdir}",
                    f"--gguf={args.gguf}", f"--eval_data={args.eval_data}",
                    f"--transformers_json={reference}")
  with open(os.path.join(args.workdir, "eval", "perplexity_rope.json")) as f:
    ours = json.load(f)
  with open(reference) as f:
    theirs = json.load(f)
  tokens = sum(theirs[f"rope@{n}"]["tokens"] for n in ours["lengths"])
  rows = ["| length | drope_jax perplexity | transformers perplexity |", "|---:|---:|---:|"]
  for length, perplexity in zip(ours["lengths"], ours["perplexity"]):
    theirs_perplexity = theirs[f"rope@{length}"]["perplexity"]
    rows.append(f"| {length} | {perplexity:.3f} | {theirs_perplexity:.3f} |")
  lines = [
      "# Long-context evaluation speed", "",
      f"`python -m benchmarks.eval_speed --workdir={args.workdir} --gguf={args.gguf} "
      f"--eval_data={args.eval_data}`", "",
      f"CPU: {host.cpu_flags()}; torch threads {theirs['threads']}.", "",
      f"{tokens:,} tokens scored ({context:,}-token windows, then one of {2 * context:,}), "
      "whole command against whole command:", "",
      "| | seconds | tokens/s |", "|---|---:|---:|",
      f"| drope_jax evaluate | {ours_s:.1f} | {tokens / ours_s:.1f} |",
      f"| transformers (sdpa, float32) | {theirs_s:.1f} | {tokens / theirs_s:.1f} |", "",
      f"drope_jax / transformers: **{theirs_s / ours_s:.2f}x** (goal: at least 1.0x).", "",
      *rows, ""]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(dict(tokens=tokens, drope_jax_seconds=ours_s, transformers_seconds=theirs_s,
                   cpu=host.cpu_flags(), drope_jax=ours, transformers=theirs), f,
              indent=1)
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  main()
