r"""Time and peak memory of `hf import` beside plain safetensors and transformers.

  python -m benchmarks.hf_import [--size_gb=1] [--repeats=3] \
      [--out=benchmarks/results/hf_import]

Builds a random float32 Llama-shaped checkpoint of about --size_gb (vocab 32000, d 1024,
SwiGLU 2816, 16 query / 8 KV heads; the layer count sets the size) in a temporary
directory: safetensors shards with an index, config.json and a tokenizer. Then loads
it three ways, each in a process of its own so that its peak resident memory (maxrss)
is its own:
  safetensors   safetensors.numpy.load_file of every shard, all tensors kept
  hf import     what `python -m drope_jax.hf import` runs: read, convert, place on
                the mesh, write the step-0 checkpoint (params; AdamW starts fresh)
  transformers  AutoModelForCausalLM.from_pretrained(DIR), then a sum over each weight
                (it may map them from the files and read them only when used)
`load s` is the load alone (imports and JAX start-up are timed apart as `start-up s`);
best and median over --repeats runs, the methods taking turns. The files sit in the
page cache: reads come from memory, not disk. The goal (issue 19): hf import under
1.5x the safetensors time, peak RSS under 1.3x the checkpoint's size.
"""

import json
import os
import pathlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

from benchmarks import host

_SIZE_GB = flags.DEFINE_float("size_gb", 1.0, "Checkpoint size, GB (1e9 bytes).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of each method.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/hf_import",
                           "Directory for results.md and results.json.")
# Set in the child processes only.
_MEASURE = flags.DEFINE_enum("measure", None, ["safetensors", "hf_import", "transformers"],
                             "Internal: load --checkpoint this way and print the times.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Internal: the checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Internal: hf import's --workdir.")

METHODS = ("safetensors", "hf_import", "transformers")
GIB = 2**30
SHAPES = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
              num_attention_heads=16, num_key_value_heads=8, head_dim=64)
SHARDS = 4


def _llama_tensors(c: dict, n_layers: int) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape of a Llama with untied embeddings."""
  e, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
  shapes = {"model.embed_tokens.weight": (v, e)}
  for i in range(n_layers):
    p = f"model.layers.{i}."
    shapes.update({
        p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
        p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q),
        p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e),
        p + "mlp.down_proj.weight": (e, f), p + "input_layernorm.weight": (e,),
        p + "post_attention_layernorm.weight": (e,)})
  shapes.update({"model.norm.weight": (e,), "lm_head.weight": (v, e)})
  return shapes


def build_checkpoint(directory: pathlib.Path, size_bytes: float) -> int:
  """Writes the checkpoint; returns its tensor bytes."""
  import transformers  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from tests import hf_models  # pylint: disable=g-import-not-at-top

  per_layer = sum(np.prod(s) for s in _llama_tensors(SHAPES, 1).values()) * 4
  fixed = sum(np.prod(s) for s in _llama_tensors(SHAPES, 0).values()) * 4
  n_layers = max(1, round((size_bytes - fixed) / (per_layer - fixed)))
  shapes = _llama_tensors(SHAPES, n_layers)
  total = int(sum(np.prod(s) for s in shapes.values()) * 4)

  rng = np.random.default_rng(0)
  shard_limit = total / SHARDS
  groups, size = [[]], 0
  for name, shape in shapes.items():
    if groups[-1] and size + np.prod(shape) * 4 > shard_limit:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += np.prod(shape) * 4
  weight_map = {}
  for i, names in enumerate(groups):  # one shard in memory at a time.
    file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    save_file({n: rng.standard_normal(shapes[n], np.float32) * np.float32(0.02)
               for n in names}, str(directory / file), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(names, file))
  (directory / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  config = transformers.LlamaConfig(**SHAPES, num_hidden_layers=n_layers,
                                    max_position_embeddings=2048, dtype="float32",
                                    tie_word_embeddings=False)
  config.architectures = ["LlamaForCausalLM"]
  config.save_pretrained(directory)
  hf_models.tokenizer(str(directory))
  return total


def _rss_gib() -> float:
  status = pathlib.Path("/proc/self/status").read_text()
  return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024 / GIB


def measure(method: str, checkpoint: str, workdir: str) -> dict:
  """In a child process: imports, then the timed load."""
  start = time.perf_counter()
  if method == "safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    files = sorted(set(json.loads(pathlib.Path(
        checkpoint, "model.safetensors.index.json").read_text())["weight_map"].values()))
    load = lambda: [load_file(os.path.join(checkpoint, f)) for f in files]
  elif method == "hf_import":
    import jax  # pylint: disable=g-import-not-at-top
    from drope_jax.hf import convert, importer  # pylint: disable=g-import-not-at-top
    jax.devices()  # the backend's start-up is no part of the import.
    load = lambda: convert.import_model(*importer.read_directory(checkpoint), workdir)
  else:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    # transformers imports lazily: the model class now, not inside the timed load.
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # pylint: disable=g-import-not-at-top,unused-import
    load = lambda: _read_all(AutoModelForCausalLM.from_pretrained(checkpoint))
  startup = time.perf_counter() - start
  rss_after_startup = _rss_gib()
  start = time.perf_counter()
  loaded = load()
  seconds = time.perf_counter() - start
  del loaded
  # ru_maxrss: this process's peak resident memory (KiB on Linux).
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
  return dict(startup_s=startup, load_s=seconds, rss_after_startup_gib=rss_after_startup,
              peak_rss_gib=peak)


def _read_all(model):
  """transformers may leave weights mapped from the files, read on first use (as a
  forward pass would): a sum over each one reads them all."""
  for parameter in model.parameters():
    parameter.sum()
  return model


def _run_child(method: str, checkpoint: pathlib.Path, workdir: pathlib.Path) -> dict:
  """One measurement in a fresh process (so the peak RSS is this method's alone)."""
  command = [sys.executable, "-m", "benchmarks.hf_import", f"--measure={method}",
             f"--checkpoint={checkpoint}", f"--workdir={workdir}"]
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        cwd=pathlib.Path(__file__).parent.parent)
  wall = time.perf_counter() - start
  if done.returncode:
    sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
  result = json.loads(done.stdout.strip().splitlines()[-1])
  return dict(result, process_s=wall)


def _summary(runs: list[dict]) -> dict:
  """Best and median of each figure (best: the fastest, the smallest)."""
  return {key: dict(best=min(r[key] for r in runs),
                    median=statistics.median(r[key] for r in runs)) for key in runs[0]}


def report(runs: dict, size: int, shards: int):
  summary = {m: _summary(r) for m, r in runs.items()}
  raw_s = summary["safetensors"]["load_s"]["median"]
  size_gib = size / GIB
  lines = [
      f"Checkpoint: {size_gib:.3f} GiB float32 ({size:,} bytes of tensors), Llama "
      f"shapes, {shards} safetensors shards + index, from the page cache.",
      f"CPU: {host.cpu_flags()}",
      f"Medians (best) of {len(runs['safetensors'])} runs per method; `x raw` and "
      "`x size` compare medians.",
      "",
      "| method | load s | x raw | peak RSS GiB | x size | start-up s | RSS after "
      "start-up GiB |",
      "|---|---:|---:|---:|---:|---:|---:|"]
  for method, s in summary.items():
    load, peak = s["load_s"], s["peak_rss_gib"]
    lines.append(
        f"| {method} | {load['median']:.2f} ({load['best']:.2f}) | "
        f"{load['median'] / raw_s:.2f} | {peak['median']:.2f} ({peak['best']:.2f}) | "
        f"{peak['median'] / size_gib:.2f} | {s['startup_s']['median']:.2f} | "
        f"{s['rss_after_startup_gib']['median']:.2f} |")
  imp = summary["hf_import"]
  time_ok = imp["load_s"]["median"] < 1.5 * raw_s
  memory_ok = imp["peak_rss_gib"]["median"] < 1.3 * size_gib
  lines += ["", f"Goals for hf import: time < 1.5x safetensors: "
            f"{'met' if time_ok else 'missed'}; peak RSS < 1.3x checkpoint size: "
            f"{'met' if memory_ok else 'missed'}."]
  text = "\n".join(lines) + "\n"
  print(text)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.md").write_text(f"# hf import benchmark\n\n`{_command()}`\n\n{text}")
  (out / "results.json").write_text(json.dumps(dict(
      command=_command(), cpu=host.cpu_flags(), checkpoint_bytes=size, shards=shards,
      runs=runs, summary=summary, goals=dict(time=time_ok, memory=memory_ok)),
      indent=2) + "\n")


def _command() -> str:
  return " ".join(["python -m benchmarks.hf_import", *sys.argv[1:]])


def main(argv):
  del argv
  if _MEASURE.value:
    print(json.dumps(measure(_MEASURE.value, _CHECKPOINT.value, _WORKDIR.value)))
    return
  root = pathlib.Path(tempfile.mkdtemp(prefix="hf_import_bench_"))
  try:
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    size = build_checkpoint(checkpoint, _SIZE_GB.value * 1e9)
    shards = len(list(checkpoint.glob("*.safetensors")))
    print(f"checkpoint: {size / GIB:.3f} GiB float32 in {shards} shards ({checkpoint})",
          flush=True)
    runs = {m: [] for m in METHODS}
    for repeat in range(_REPEATS.value):
      for method in METHODS:
        workdir = root / f"workdir_{repeat}"
        runs[method].append(_run_child(method, checkpoint, workdir))
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"  {method} run {repeat + 1}: {runs[method][-1]['load_s']:.2f} s, "
              f"peak {runs[method][-1]['peak_rss_gib']:.2f} GiB", flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  report(runs, size, shards)


if __name__ == "__main__":
  app.run(main)
