"""The source model's tokenizer files: where they come from and how they frame text.

`hf import` copies them into WORKDIR/hf/: from the model directory, or, when the weights
came without them, from `--tokenizer=DIR` (a directory holding tokenizer.json) or
`--tokenizer=FILE` (a tokenizer.json; the other files are read from beside it).
`framing` reads from them how the source starts a text (drope_jax/data/framing.py).
"""

import json
from collections.abc import Mapping

import tokenizers
from etils import epath

from drope_jax.hf.common import HFError

TOKENIZER_JSON = "tokenizer.json"
CONFIG_JSON = "tokenizer_config.json"
# transformers saves a chat template into chat_template.jinja (it wins over the one in
# tokenizer_config.json).
FILES = (TOKENIZER_JSON, CONFIG_JSON, "special_tokens_map.json", "chat_template.jinja")
_FLAG_HELP = ("give it with --tokenizer=DIR (a directory holding tokenizer.json) or "
              "--tokenizer=FILE (a tokenizer.json; a tokenizer_config.json beside it is "
              "read too)")


def beside_weights(directory: epath.Path) -> dict[str, bytes]:
  """The tokenizer files in the model directory; HFError naming the missing ones."""
  missing = [name for name in (TOKENIZER_JSON, CONFIG_JSON)
             if not (directory / name).exists()]
  if TOKENIZER_JSON in missing:
    raise HFError(f"{directory} has the weights but no {' and no '.join(missing)}: the "
                  f"importer needs the model's tokenizer; {_FLAG_HELP}")
  return _read(directory, directory / TOKENIZER_JSON)


def from_flag(path: str) -> dict[str, bytes]:
  """--tokenizer=DIR|FILE: the tokenizer files it names."""
  path = epath.Path(path)
  if path.is_dir():
    if not (path / TOKENIZER_JSON).exists():
      raise HFError(f"--tokenizer={path} holds no {TOKENIZER_JSON}: {_FLAG_HELP}")
    return _read(path, path / TOKENIZER_JSON)
  if not path.exists():
    raise HFError(f"--tokenizer={path}: no such file or directory; {_FLAG_HELP}")
  return _read(path.parent, path)


def _read(directory: epath.Path, tokenizer_json: epath.Path) -> dict[str, bytes]:
  files = {name: (directory / name).read_bytes() for name in FILES[1:]
           if (directory / name).exists()}
  return {TOKENIZER_JSON: tokenizer_json.read_bytes(), **files}


def framing(files: Mapping[str, bytes], bos_id: int) -> str:
  """'bos' when the source starts a text with its BOS (id `bos_id`), else 'none'.

  tokenizer_config.json's add_bos_token decides where it is set (a GGUF's
  tokenizer.ggml.add_bos_token is written there); else tokenizer.json's post-processor,
  which is what transformers runs (Llama 3's adds the BOS; Qwen2's, SmolLM2's nothing).
  """
  config = json.loads(files.get(CONFIG_JSON, b"{}"))
  add_bos = config.get("add_bos_token")
  if add_bos is None:
    backend = tokenizers.Tokenizer.from_str(files[TOKENIZER_JSON].decode("utf-8"))
    framed = backend.encode("x", add_special_tokens=True).ids
    plain = backend.encode("x", add_special_tokens=False).ids
    add_bos = len(framed) > len(plain) and framed[0] == bos_id
  return "bos" if add_bos else "none"
