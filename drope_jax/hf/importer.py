"""A Hugging Face checkpoint directory (local or gs://) -> the import seam's inputs."""

import json

from etils import epath

from drope_jax.hf import architectures
from drope_jax.hf import convert
from drope_jax.hf import safetensors_io
from drope_jax.hf import source_tokenizer

# Beside the weights, copied into WORKDIR/hf/ when present.
GENERATION_CONFIG = "generation_config.json"
# Every file of the source that WORKDIR/hf/ keeps (and `hf export` writes back).
SOURCE_FILES = (*source_tokenizer.FILES, GENERATION_CONFIG)


def read_directory(directory, tokenizer: str | None = None) -> tuple[dict, dict, dict]:
  """(config.json as a dict, name -> LazyTensor, source file name -> bytes).

  The tokenizer files come from `tokenizer` (--tokenizer=DIR|FILE) when given, else
  from the directory.
  """
  directory = epath.Path(directory)
  if not (directory / "config.json").exists():
    raise convert.HFError(f"{directory} has no config.json: give the directory of a "
                          "Hugging Face model (config.json, *.safetensors, tokenizer.json)")
  hf_config = _read_config(directory / "config.json")
  # The architecture is checked first: its message beats one about missing files.
  architectures.to_model_keys(hf_config)
  tensors = safetensors_io.open_checkpoint(directory)
  files = (source_tokenizer.from_flag(tokenizer) if tokenizer
           else source_tokenizer.beside_weights(directory))
  if (directory / GENERATION_CONFIG).exists():
    files[GENERATION_CONFIG] = (directory / GENERATION_CONFIG).read_bytes()
  return hf_config, tensors, files


def _read_config(path: epath.Path) -> dict:
  try:
    hf_config = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise convert.HFError(f"{path} is not valid JSON ({e}): give the model's own "
                          "config.json") from e
  if not isinstance(hf_config, dict):
    raise convert.HFError(f"{path} does not hold a JSON object: give the model's own "
                          "config.json")
  return hf_config
