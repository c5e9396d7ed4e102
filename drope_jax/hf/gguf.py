"""A llama.cpp GGUF file read as a Hugging Face checkpoint.

`read_gguf(path)` gives what `importer.read_directory` gives for a Hugging Face
directory, the inputs of `convert.import_model`: config.json as a dict, the tensors under
their Hugging Face names and layout (LazyTensors, dequantized to float32 when loaded, one
at a time) and the tokenizer files (rebuilt from the GGUF metadata: gguf_tokenizer.py).

Two things llama.cpp's converter changed are undone here:
  * names: `blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`, ...;
  * Llama q/k rows: llama.cpp interleaves each head's two rotary halves (x0, y0, x1, y1,
    ...) for its own RoPE kernel; Hugging Face's `rotate_half` wants them split (x0, x1,
    ..., y0, y1, ...). Qwen2 files are converted without that permutation.
"""

import functools
import importlib.metadata
import re

import gguf
import numpy as np

from drope_jax.hf import common
from drope_jax.hf import gguf_tokenizer

# GGUF `general.architecture` -> (Hugging Face model_type, architecture).
ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"),
                 "qwen2": ("qwen2", "Qwen2ForCausalLM")}
_PERMUTED_QK = frozenset({"llama"})

# `{arch}.KEY` in the GGUF metadata -> config.json key; all are required.
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
}

# GGUF tensor name -> Hugging Face name (`\1`: the layer).
_TENSOR_NAMES = (
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"blk\.(\d+)\.attn_output\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"model.layers.\1.mlp.down_proj.weight"),
)


def read_gguf(path: str) -> tuple[dict, dict, dict]:
  """(config.json as a dict, HF name -> LazyTensor, tokenizer file name -> bytes)."""
  if "://" in path:
    raise common.HFError(f"{path}: GGUF files are read from local disk; copy it here first")
  try:
    reader = gguf.GGUFReader(path)
  except (OSError, ValueError) as e:
    raise common.HFError(f"cannot read {path} as a GGUF file ({e}): pass a llama.cpp "
                          ".gguf model file") from e
  meta = functools.partial(_metadata, reader, path)
  arch = meta("general.architecture", None)
  if arch not in ARCHITECTURES:
    raise common.HFError(
        f"{path} is a GGUF file of architecture {arch!r}; supported: "
        f"{', '.join(sorted(ARCHITECTURES))}")
  scaling = meta(f"{arch}.rope.scaling.type", "none")
  if scaling != "none":
    raise common.HFError(f"{path} has RoPE scaling {scaling!r}, which this importer does "
                          "not read: import the model's Hugging Face directory instead")
  tensor_names = [t.name for t in reader.tensors]
  config = _config(meta, arch, tensor_names)
  config["_name_or_path"] = path
  heads = {}
  if arch in _PERMUTED_QK:
    heads = {"q_proj": config["num_attention_heads"],
             "k_proj": config["num_key_value_heads"]}
  tensors = {}
  for tensor in reader.tensors:
    name = _hf_name(tensor.name, path)
    rotary_heads = next((n for proj, n in heads.items() if f".{proj}." in name), None)
    tensors[name] = common.LazyTensor(
        shape=tuple(int(n) for n in reversed(tensor.shape)),  # GGUF lists dims inner first.
        dtype=np.dtype(np.float32), load=functools.partial(_load, tensor, rotary_heads))
  files = gguf_tokenizer.tokenizer_files(meta, config["max_position_embeddings"])
  return config, tensors, files


_MISSING = object()


def _metadata(reader, path: str, key: str, default=_MISSING):
  """The value of `key` (scalars, strings and lists as Python values)."""
  field = reader.fields.get(key)
  if field is not None:
    return field.contents()
  if default is _MISSING:
    raise common.HFError(f"{path} has no metadata key {key!r}, which the model config "
                          "needs: is the file complete?")
  return default


def _config(meta, arch: str, tensor_names: list[str]) -> dict:
  model_type, architecture = ARCHITECTURES[arch]
  config = {"architectures": [architecture], "model_type": model_type}
  for key, hf_key in _CONFIG_KEYS.items():
    config[hf_key] = meta(f"{arch}.{key}")
  heads = config["num_attention_heads"]
  config["num_key_value_heads"] = meta(f"{arch}.attention.head_count_kv", heads)
  config["head_dim"] = meta(f"{arch}.attention.key_length",
                            meta(f"{arch}.rope.dimension_count", config["hidden_size"] // heads))
  config["vocab_size"] = meta(f"{arch}.vocab_size", None) or len(meta("tokenizer.ggml.tokens"))
  config["hidden_act"] = "silu"
  # llama.cpp writes no output.weight when the LM head is the embedding.
  config["tie_word_embeddings"] = "output.weight" not in tensor_names
  if model_type == "llama":
    config.update(attention_bias=False, mlp_bias=False)
  for hf_key, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                      ("pad_token_id", "padding")):
    token_id = meta(f"tokenizer.ggml.{key}_token_id", None)
    if token_id is not None:
      config[hf_key] = int(token_id)
  config["torch_dtype"] = "float32"
  return config


def _hf_name(gguf_name: str, path: str) -> str:
  for pattern, replacement in _TENSOR_NAMES:
    if re.fullmatch(pattern, gguf_name):
      return re.sub(pattern, replacement, gguf_name)
  raise common.HFError(
      f"{path} has a tensor {gguf_name!r} with no Hugging Face name here: only plain "
      "Llama / Qwen2 decoders (no RoPE frequency factors, no MoE) are supported")


def _load(tensor, rotary_heads: int | None) -> np.ndarray:
  """The tensor in float32, its q/k rows back in Hugging Face's order."""
  try:
    w_RC = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise common.HFError(
        f"tensor {tensor.name} is {tensor.tensor_type.name}, which gguf "
        f"{importlib.metadata.version('gguf')} cannot dequantize: requantize the file "
        "(e.g. to Q8_0) with llama.cpp") from e
  w_RC = np.asarray(w_RC, dtype=np.float32)
  if rotary_heads is None:
    return w_RC
  # Per head, rows (x0, y0, x1, y1, ...) -> (x0, x1, ..., y0, y1, ...).
  w = w_RC.reshape(rotary_heads, w_RC.shape[0] // rotary_heads // 2, 2, *w_RC.shape[1:])
  return w.swapaxes(1, 2).reshape(w_RC.shape)
