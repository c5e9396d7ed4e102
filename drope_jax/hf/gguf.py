"""A llama.cpp GGUF file read as a Hugging Face checkpoint.

`read_gguf(path)` gives what `importer.read_directory` gives for a Hugging Face
directory, the inputs of `convert.import_model`: the `config.json` dict, the
tensors under their Hugging Face names and layout (LazyTensors, dequantized to
float32 one at a time when loaded) and the tokenizer files (`tokenizer.json`
rebuilt from the GGUF tokenizer metadata, `tokenizer_config.json`, ...).

Two things llama.cpp changes on its way in are undone here:
  * names: `blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`;
  * Llama q/k rows: llama.cpp's converter interleaves each head's two rotary
    halves (x0, y0, x1, y1, ...) for its own RoPE kernel; Hugging Face's
    `rotate_half` wants them split (x0, x1, ..., y0, y1, ...). Qwen2 files are
    converted without that permutation, so theirs are left as they are.
"""

import functools
import json
import logging
import re

import gguf
import numpy as np

from drope_jax.hf import convert

# GGUF `general.architecture` -> (Hugging Face model_type, architectures[0]).
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}
_PERMUTED_QK = frozenset({"llama"})

# `{arch}.KEY` in the GGUF metadata -> config.json key.
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
}

# GGUF tensor name -> Hugging Face name, tried in order (`\1` is the layer).
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

# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4

# `tokenizer.ggml.pre` -> how text is split before byte-level BPE. Files
# name the pre-tokenizer of the model they came from; these are llama.cpp's
# splits for the common ones. Anything else gets GPT-2's, as in transformers.
_DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "codeshell"})
_SPLIT_REGEX = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_SPLIT_REGEX["llama-bpe"] = _SPLIT_REGEX["llama3"]
_GPT2_PRE = frozenset({"default", "gpt2", "gpt-2"})


def read_gguf(path: str) -> tuple[dict, dict, dict]:
  """(config.json as a dict, HF name -> LazyTensor, tokenizer file name -> bytes).

  Metadata is read now; a tensor is dequantized when its LazyTensor is loaded.
  """
  if "://" in path:
    raise convert.HFError(f"{path}: GGUF files are read from local disk; copy it here first")
  try:
    reader = gguf.GGUFReader(path)
  except (OSError, ValueError) as e:
    raise convert.HFError(f"cannot read {path} as a GGUF file ({e}); pass a llama.cpp .gguf model file.") from e
  meta = _Metadata(reader, path)
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise convert.HFError(
        f"{path} is a GGUF file of architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
        "Convert the model to one of those, or to a Hugging Face directory, first.")
  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  if scaling != "none":
    raise convert.HFError(f"{path} uses RoPE scaling {scaling!r}, which this importer does not read; use a file without it.")
  config = _config(meta, arch, reader)
  config["_name_or_path"] = path
  heads = None
  if arch in _PERMUTED_QK:
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
  tensors = {}
  for tensor in reader.tensors:
    name = _hf_name(tensor.name, path)
    tensors[name] = convert.LazyTensor(
        shape=tuple(int(n) for n in reversed(tensor.shape)), dtype=np.dtype(np.float32),
        load=functools.partial(_load, tensor, _heads_of(name, heads)))
  return config, tensors, _tokenizer_files(meta, config)


class _Metadata:
  """The key/value part of a GGUF file, values as Python scalars, strings and lists."""

  def __init__(self, reader: gguf.GGUFReader, path: str):
    self._fields = reader.fields
    self._path = path

  def __contains__(self, key: str) -> bool:
    return key in self._fields

  def get(self, key: str, default=None):
    field = self._fields.get(key)
    return default if field is None else field.contents()

  def require(self, key: str):
    if key not in self._fields:
      raise convert.HFError(f"{self._path} has no metadata key {key!r}, which the model config needs; is the file complete?")
    return self.get(key)


def _config(meta: _Metadata, arch: str, reader: gguf.GGUFReader) -> dict:
  model_type, architecture = ARCHITECTURES[arch]
  config = {"architectures": [architecture], "model_type": model_type}
  for key, hf_key in _CONFIG_KEYS.items():
    if key == "attention.head_count_kv" and f"{arch}.{key}" not in meta:
      continue  # multi-head attention: as many KV heads as query heads
    config[hf_key] = meta.require(f"{arch}.{key}")
  config.setdefault("num_key_value_heads", config["num_attention_heads"])
  config["head_dim"] = meta.get(
      f"{arch}.attention.key_length",
      meta.get(f"{arch}.rope.dimension_count", config["hidden_size"] // config["num_attention_heads"]))
  config["vocab_size"] = meta.get(f"{arch}.vocab_size") or len(meta.require("tokenizer.ggml.tokens"))
  config["hidden_act"] = "silu"
  # llama.cpp writes no output.weight when the LM head is the embedding.
  config["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
  if model_type == "llama":
    config["attention_bias"] = False
    config["mlp_bias"] = False
  for name in ("bos", "eos", "padding"):
    token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
    if token_id is not None:
      config[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
  config["torch_dtype"] = "float32"
  return config


def _heads_of(name: str, heads: dict | None) -> int | None:
  """The head count whose rotary rows llama.cpp interleaved in `name`, if it did."""
  for proj, n in (heads or {}).items():
    if f".self_attn.{proj}." in name:
      return n
  return None


def _load(tensor, heads: int | None) -> np.ndarray:
  try:
    array_RC = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise convert.HFError(
        f"tensor {tensor.name} is stored as {tensor.tensor_type.name}, which gguf "
        f"{_gguf_version()} cannot dequantize; requantize the file (e.g. to Q8_0) with llama.cpp.") from e
  array_RC = np.asarray(array_RC, dtype=np.float32)
  return array_RC if heads is None else _unpermute_rotary(array_RC, heads)


def _hf_name(gguf_name: str, path: str) -> str:
  for pattern, replacement in _TENSOR_NAMES:
    if re.fullmatch(pattern, gguf_name):
      return re.sub(pattern, replacement, gguf_name)
  raise convert.HFError(f"{path} has a tensor {gguf_name!r} this importer has no Hugging Face name for; "
                  "only plain Llama/Qwen2 decoders (no RoPE frequency factors, no MoE) are supported.")


def _unpermute_rotary(w_RC: np.ndarray, n_heads: int) -> np.ndarray:
  """Per head, rows (x0, y0, x1, y1, ...) -> (x0, x1, ..., y0, y1, ...)."""
  rows = w_RC.shape[0]
  w = w_RC.reshape(n_heads, rows // n_heads // 2, 2, *w_RC.shape[1:])
  return w.swapaxes(1, 2).reshape(w_RC.shape)


def _gguf_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version("gguf")


def _tokenizer_files(meta: _Metadata, config: dict) -> dict[str, bytes]:
  """`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`."""
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise convert.HFError(f"the file's tokenizer is {kind!r}; only byte-level BPE ('gpt2') tokenizers are "
                    "supported. Import the model's Hugging Face directory instead.")
  tokens = meta.require("tokenizer.ggml.tokens")
  token_types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  tokenizer = _byte_level_bpe(tokens, meta.require("tokenizer.ggml.merges"), token_types,
                              meta.get("tokenizer.ggml.pre", "default"))
  special = {}
  for role, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                    ("pad_token", "padding")):
    token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
    if token_id is not None:
      special[role] = tokens[token_id]
  add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
  add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
  _set_post_processor(tokenizer, special, add_bos, add_eos)
  tokenizer_config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "add_bos_token": add_bos,
      "add_eos_token": add_eos,
      "model_max_length": config["max_position_embeddings"],
      **special,
  }
  chat_template = meta.get("tokenizer.chat_template")
  if chat_template is not None:
    tokenizer_config["chat_template"] = chat_template
  files = {
      "tokenizer.json": tokenizer.to_str(pretty=True),
      "tokenizer_config.json": json.dumps(tokenizer_config, indent=2, ensure_ascii=False),
      "special_tokens_map.json": json.dumps(special, indent=2, ensure_ascii=False),
  }
  return {name: text.encode("utf-8") for name, text in files.items()}


def _byte_level_bpe(tokens, merges, token_types, pre: str):
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  byte_char = _bytes_to_unicode()

  def spelled(token: str) -> str:
    # A token outside the byte alphabet (a mislabelled raw string) is
    # spelled through its UTF-8 bytes, as byte-level BPE would see it.
    if set(token) <= set(alphabet):
      return token
    return "".join(byte_char[b] for b in token.encode("utf-8"))

  vocab = {spelled(token): i for i, token in enumerate(tokens)}
  pairs = [tuple(merge.split(" ", 1)) for merge in merges]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_THEN_GPT2:
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre in _SPLIT_REGEX:
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_SPLIT_REGEX[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:
    if pre not in _GPT2_PRE:
      logging.warning("GGUF pre-tokenizer %r is unknown here; splitting text as GPT-2 does.", pre)
    tokenizer.pre_tokenizer = byte_level
  tokenizer.decoder = decoders.ByteLevel()
  # Control tokens (<|endoftext|>, ...) are matched whole and are special;
  # user-defined ones are matched whole but are ordinary text. A "control"
  # token outside the byte alphabet is a llama.cpp mislabel and stays as is.
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind in zip(tokens, token_types) if kind == _CONTROL and set(t) <= set(alphabet)])
  tokenizer.add_tokens([
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED])
  return tokenizer


def _set_post_processor(tokenizer, special: dict, add_bos: bool, add_eos: bool) -> None:
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  ends = [(special[role], tokenizer.token_to_id(special[role]))
          for role, wanted in (("bos_token", add_bos), ("eos_token", add_eos)) if wanted]
  if not ends:
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return
  bos = f"{special['bos_token']} " if add_bos else ""
  eos = f" {special['eos_token']}" if add_eos else ""
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{bos}$A{eos}", pair=f"{bos}$A{eos} {bos}$B{eos}", special_tokens=ends)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars = list(printable)
  n = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(printable, map(chr, chars)))
