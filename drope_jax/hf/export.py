"""A run's checkpoint -> a Hugging Face model directory.

A RoPE checkpoint exports as its source architecture (or the one its model keys
imply: biases -> Qwen2, head_qk -> Qwen3, else Llama), loadable by transformers
without remote code. A NoPE checkpoint (a NoPE run, or DroPE after the drop) exports
with modeling_drope.py, registered through `auto_map` (trust_remote_code=True), and
carries its QK-norm, biases and the softmax-temperature c of WORKDIR/eval/
temperature.json (from `evaluate --fit_temperature`) when there is one.
"""

import json
import os
import shutil

import jax
import numpy as np
from etils import epath

from drope_jax import checkpoint
from drope_jax import config as config_lib
from drope_jax import directories
from drope_jax.eval import loading
from drope_jax.hf import architectures
from drope_jax.hf import convert
from drope_jax.hf import importer
from drope_jax.hf import safetensors_io
from drope_jax.hf import tensors as tensors_lib

MODELING_FILE = "modeling_drope.py"
_DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def _source_dir(config) -> epath.Path | None:
  """WORKDIR/hf/ of the import this run descends from (its data.tokenizer's home)."""
  kind, _, path = config.data.tokenizer.partition(":")
  return epath.Path(path).parent if kind == "hf" else None


def _temperature_c(workdir: str) -> float:
  path = epath.Path(workdir) / "eval" / "temperature.json"
  return float(json.loads(path.read_text())["c"]) if path.exists() else 0.0


def hf_config_of(run: loading.Run, source: dict | None, dtype: str) -> dict:
  """config.json for `run`: its source's keys, with the run's model written over."""
  model = run.config.model
  arch = (architectures.architecture(source) if source
          else architectures.default_architecture(model))
  if arch == "MistralForCausalLM" and run.positional().kind == "nope":
    arch = "LlamaForCausalLM"  # without its (refused) sliding window, the same model.
  config = architectures.to_hf_config(model, arch, run.train_len, source)
  config["dtype"] = dtype
  if run.positional().kind == "nope":
    nope_class = "Drope" + arch
    config.update(
        architectures=[nope_class],
        auto_map={"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{nope_class}"},
        drope_qk_norm=model.qk_norm, drope_qkv_bias=bool(model.get("attention_bias")),
        drope_temperature_c=_temperature_c(run.workdir), drope_train_len=run.train_len)
  return config


def export(workdir: str, out: str, *, step: int | None = None, dtype: str | None = None,
           max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the checkpoint at `step` (default: latest) of `workdir` into `out`."""
  out_dir = epath.Path(out)
  try:
    directories.check_writable(out, f"--out={out}")
  except config_lib.ConfigError as e:
    raise convert.HFError(str(e)) from e
  if out_dir.exists() and any(out_dir.iterdir()):
    raise convert.HFError(f"--out={out} is not empty: export into a new directory")
  run = loading.load_run(workdir, step)
  source_dir = _source_dir(run.config)
  source = None
  if source_dir is not None and (source_dir / "config.json").exists():
    source = json.loads((source_dir / "config.json").read_text())
  dtype = dtype or (source or {}).get("dtype") or (source or {}).get("torch_dtype") or (
      run.config.model.param_dtype)
  if dtype not in _DTYPES:
    raise convert.HFError(f"dtype {dtype!r}: export as float32 or bfloat16 (--dtype)")
  hf_config = hf_config_of(run, source, dtype)

  params = {checkpoint.path_key(p)[:-1]: leaf for p, leaf in
            jax.tree_util.tree_flatten_with_path(run.params)[0]}

  def hf_tensors():
    for entry in tensors_lib.entries(run.config.model):
      value = params[entry.ours]
      if entry.layer is not None:
        value = value[entry.layer]  # one layer at a time from device to host.
      value = np.asarray(jax.device_get(value))
      yield entry.hf, entry.to_hf(value).astype(_DTYPES[dtype])

  out_dir.mkdir(parents=True, exist_ok=True)
  files = safetensors_io.write_checkpoint(out_dir, hf_tensors(), max_shard_bytes)
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
  files.append("config.json")
  if "auto_map" in hf_config:
    shutil.copyfile(os.path.join(os.path.dirname(__file__), MODELING_FILE),
                    os.fspath(out_dir / MODELING_FILE))
    files.append(MODELING_FILE)
  if source_dir is not None:
    for name in importer.SOURCE_FILES:
      if (source_dir / name).exists():
        (out_dir / name).write_bytes((source_dir / name).read_bytes())
        files.append(name)
  return files
