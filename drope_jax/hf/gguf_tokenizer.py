"""A GGUF file's tokenizer metadata -> Hugging Face tokenizer files.

A GGUF holds no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`,
by id), the BPE merges, a type per token (normal, control, user-defined, ...), the special
token ids and a name for how text is split before BPE (`tokenizer.ggml.pre`). Byte-level
BPE (`tokenizer.ggml.model=gpt2`: GPT-2, SmolLM, Llama 3, Qwen2, ...) is rebuilt here with
the `tokenizers` library, as transformers' GGUF loader does.
"""

import json
import logging

import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors

from drope_jax.hf import common

# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

# `tokenizer.ggml.pre` -> how text is split before BPE: llama.cpp's splits for the common
# ones; anything else is split as GPT-2 does (as transformers does too).
_GPT2 = frozenset({"default", "gpt2", "gpt-2"})
_DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "codeshell"})
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3, "llama-bpe": _LLAMA3, "qwen2": _QWEN2}

# Roles in tokenizer_config.json -> `tokenizer.ggml.<key>_token_id`.
_SPECIAL_ROLES = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown",
                  "pad_token": "padding"}


def tokenizer_files(meta, context: int) -> dict[str, bytes]:
  """tokenizer.json, tokenizer_config.json, special_tokens_map.json of the file.

  `meta(key, default)` reads the GGUF metadata; `context` is the model's.
  """
  kind = meta("tokenizer.ggml.model", None)
  if kind != "gpt2":
    raise common.HFError(
        f"the file's tokenizer is {kind!r}; only byte-level BPE ('gpt2') tokenizers are "
        "supported: import the model's Hugging Face directory instead")
  tokens = meta("tokenizer.ggml.tokens", None)
  merges = meta("tokenizer.ggml.merges", None)
  if tokens is None or merges is None:
    raise common.HFError("the file's tokenizer has no tokens or no merges: is it complete?")
  token_types = meta("tokenizer.ggml.token_type", None) or [_NORMAL] * len(tokens)
  tokenizer = _byte_level_bpe(tokens, merges, token_types,
                              meta("tokenizer.ggml.pre", "default"))
  special = {}
  for role, key in _SPECIAL_ROLES.items():
    token_id = meta(f"tokenizer.ggml.{key}_token_id", None)
    if token_id is not None:
      special[role] = tokens[token_id]
  add_bos = bool(meta("tokenizer.ggml.add_bos_token", False))
  add_eos = bool(meta("tokenizer.ggml.add_eos_token", False))
  for role, wanted in (("bos_token", add_bos), ("eos_token", add_eos)):
    if wanted and role not in special:
      raise common.HFError(f"the file's tokenizer adds a {role} but names none: is it complete?")
  tokenizer.post_processor = _post_processor(tokenizer, special, add_bos, add_eos)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos,
            "add_eos_token": add_eos, "model_max_length": context, **special}
  chat_template = meta("tokenizer.chat_template", None)
  if chat_template is not None:
    config["chat_template"] = chat_template
  files = {"tokenizer.json": tokenizer.to_str(pretty=True),
           "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
           "special_tokens_map.json": json.dumps(special, indent=2, ensure_ascii=False)}
  return {name: text.encode("utf-8") for name, text in files.items()}


def _byte_level_bpe(tokens, merges, token_types, pre: str) -> tokenizers.Tokenizer:
  alphabet = frozenset(pre_tokenizers.ByteLevel.alphabet())
  byte_char = _bytes_to_unicode()

  def spelled(token: str) -> str:
    # A token outside the byte alphabet (stored as raw text) is spelled through its
    # UTF-8 bytes, as byte-level BPE sees it.
    if set(token) <= alphabet:
      return token
    return "".join(byte_char[b] for b in token.encode("utf-8"))

  vocab = {spelled(token): i for i, token in enumerate(tokens)}
  pairs = [tuple(merge.split(" ", 1)) for merge in merges]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
  tokenizer.pre_tokenizer = _pre_tokenizer(pre)
  tokenizer.decoder = decoders.ByteLevel()
  # Control tokens (<|endoftext|>, ...) are matched whole and are special; user-defined
  # ones are matched whole but are text. A "control" token outside the byte alphabet is
  # a llama.cpp mislabel: it stays an ordinary vocabulary entry.
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind in zip(tokens, token_types) if kind == _CONTROL and set(t) <= alphabet])
  tokenizer.add_tokens([
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED])
  return tokenizer


def _pre_tokenizer(pre: str):
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_THEN_GPT2:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
  if pre in _SPLITS:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  if pre not in _GPT2:
    logging.warning("GGUF pre-tokenizer %r is not known here: text is split as GPT-2 does",
                    pre)
  return gpt2


def _post_processor(tokenizer, special: dict, add_bos: bool, add_eos: bool):
  """BOS / EOS around each sequence where the file asks for them."""
  if not (add_bos or add_eos):
    return processors.ByteLevel(trim_offsets=False)
  bos = f"{special['bos_token']} " if add_bos else ""
  eos = f" {special['eos_token']}" if add_eos else ""
  ends = [(special[role], tokenizer.token_to_id(special[role]))
          for role, wanted in (("bos_token", add_bos), ("eos_token", add_eos)) if wanted]
  return processors.TemplateProcessing(
      single=f"{bos}$A{eos}", pair=f"{bos}$A{eos} {bos}$B{eos}", special_tokens=ends)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable},
          **{b: chr(256 + n) for n, b in enumerate(others)}}
