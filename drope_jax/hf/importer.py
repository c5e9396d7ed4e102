"""A Hugging Face checkpoint directory (local or gs://) -> the import seam's inputs."""

import json

from etils import epath

from drope_jax.hf import architectures
from drope_jax.hf import convert
from drope_jax.hf import safetensors_io

# Copied into WORKDIR/hf/ when present; tokenizer.json is required.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def read_directory(directory) -> tuple[dict, dict, dict]:
  """(config.json as a dict, name -> LazyTensor, tokenizer file name -> bytes)."""
  directory = epath.Path(directory)
  if not (directory / "config.json").exists():
    raise convert.HFError(f"{directory} has no config.json: give the directory of a "
                          "Hugging Face model (config.json, *.safetensors, tokenizer.json)")
  hf_config = json.loads((directory / "config.json").read_text())
  # The architecture is checked first: its message beats one about missing files.
  architectures.to_model_keys(hf_config)
  tensors = safetensors_io.open_checkpoint(directory)
  files = {name: (directory / name).read_bytes() for name in TOKENIZER_FILES
           if (directory / name).exists()}
  return hf_config, tensors, files
