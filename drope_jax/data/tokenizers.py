"""Tokenizers behind one interface: byte-level, SentencePiece, Hugging Face.

`get_tokenizer(spec)` builds one from a spec string:
  "byte"                  256 byte values + BOS/EOS/PAD (259 ids), built in.
  "sentencepiece:PATH"    a SentencePiece model file (local or gs://).
  "hf:PATH"               a Hugging Face `tokenizer.json` (local or gs://); its special
                          tokens come from a tokenizer_config.json next to it, if any.

Every tokenizer pickles as its spec, so worker processes rebuild it themselves.
"""

import abc
import hashlib
import json
from collections.abc import Sequence

from etils import epath
import numpy as np

from drope_jax import errors

BYTE_VOCAB_SIZE = 259

# Names tried, in order, to find the special tokens of a Hugging Face tokenizer.
_HF_EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "[SEP]")
_HF_BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>", "[CLS]")
_HF_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


class TokenizerError(errors.BadInput, ValueError):
  """A tokenizer spec or file that cannot be used; the message says why."""


class Tokenizer(abc.ABC):
  """Text <-> token ids, with the special ids the data pipeline needs."""

  spec: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; special ids are dropped."""

  @property
  @abc.abstractmethod
  def identity(self) -> dict[str, object]:
    """What a manifest records to tell this tokenizer from any other."""

  def encode_array(self, text: str) -> np.ndarray:
    return np.asarray(self.encode(text), dtype=np.int32)

  def __reduce__(self):
    return get_tokenizer, (self.spec,)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes are ids 0..255; BOS, EOS, PAD follow."""

  spec = "byte"
  vocab_size = BYTE_VOCAB_SIZE
  bos_id = 256
  eos_id = 257
  pad_id = 258

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(i for i in ids if 0 <= i < 256)
    return data.decode("utf-8", errors="replace")

  @property
  def identity(self) -> dict[str, object]:
    return {"kind": "byte", "vocab_size": self.vocab_size}


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model file."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self.spec = f"sentencepiece:{path}"
    model = _read_bytes(path, "SentencePiece model")
    self._sha256 = hashlib.sha256(model).hexdigest()
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    except RuntimeError as e:
      raise TokenizerError(f"{path} is not a SentencePiece model ({e}); give the "
                           ".model file the tokenizer was saved as") from e
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise TokenizerError(
          f"SentencePiece model {path} has no EOS piece; the data pipeline "
          "ends every document with EOS. Train it with eos_id >= 0.")
    # Models trained without BOS/PAD borrow EOS: padding is masked anyway.
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else self.eos_id
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  @property
  def identity(self) -> dict[str, object]:
    return {"kind": "sentencepiece", "sha256": self._sha256,
            "vocab_size": self.vocab_size}


class HuggingFaceTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` JSON file (e.g. from `train_tokenizer`).

  A pretrained model's tokenizer_config.json (same directory) names its EOS, BOS and
  PAD tokens (Llama 3's `<|end_of_text|>`, ...); without one, common names are tried.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self.spec = f"hf:{path}"
    data = _read_bytes(path, "Hugging Face tokenizer")
    self._sha256 = hashlib.sha256(data).hexdigest()
    try:
      self._tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except  (the library's own errors)
      raise TokenizerError(
          f"{path} is not a Hugging Face tokenizer.json ({type(e).__name__}: "
          f"{str(e)[:200]}); give the file `tokenizer.save()` or "
          "`python -m drope_jax.data.train_tokenizer` wrote") from e
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    named = _special_tokens(epath.Path(path).parent / "tokenizer_config.json")
    eos = _find_token(self._tok, named.get("eos_token", ()) + _HF_EOS_NAMES)
    if eos is None:
      raise TokenizerError(
          f"Hugging Face tokenizer {path} has none of the EOS tokens "
          f"{', '.join(_HF_EOS_NAMES)}; the data pipeline ends every document "
          "with EOS. Add one as a special token.")
    self.eos_id = eos
    bos = _find_token(self._tok, named.get("bos_token", ()) + _HF_BOS_NAMES)
    pad = _find_token(self._tok, named.get("pad_token", ()) + _HF_PAD_NAMES)
    self.bos_id = eos if bos is None else bos
    self.pad_id = eos if pad is None else pad

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  @property
  def identity(self) -> dict[str, object]:
    return {"kind": "hf", "sha256": self._sha256, "vocab_size": self.vocab_size}


def get_tokenizer(spec: str) -> Tokenizer:
  """Builds the tokenizer named by `spec` (see the module docstring)."""
  kind, _, path = spec.partition(":")
  if kind == "byte" and not path:
    return ByteTokenizer()
  if kind == "sentencepiece" and path:
    return SentencePieceTokenizer(path)
  if kind == "hf" and path:
    return HuggingFaceTokenizer(path)
  raise TokenizerError(
      f"unknown tokenizer spec {spec!r}: use 'byte', 'sentencepiece:PATH' "
      "or 'hf:PATH' (a tokenizer.json).")


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Raises TokenizerError when token ids could index past the embedding table."""
  if tokenizer.vocab_size > model_vocab_size:
    raise TokenizerError(
        f"tokenizer {tokenizer.spec!r} has {tokenizer.vocab_size} ids but the "
        f"model's embedding has only model.vocab_size={model_vocab_size}: set "
        f"--config.model.vocab_size to at least {tokenizer.vocab_size} (e.g. "
        f"{_round_up(tokenizer.vocab_size, 128)}, a multiple of 128), or use "
        "the tokenizer the model was trained with.")


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _special_tokens(config_path: epath.Path) -> dict[str, tuple[str, ...]]:
  """{'eos_token': (name,), ...} from a tokenizer_config.json; {} without one."""
  if not config_path.exists():
    return {}
  config = json.loads(config_path.read_text())
  named = {}
  for key in ("eos_token", "bos_token", "pad_token"):
    token = config.get(key)
    if isinstance(token, dict):  # older files: {"content": "</s>", ...}
      token = token.get("content")
    if isinstance(token, str):
      named[key] = (token,)
  return named


def _find_token(tok, names: Sequence[str]) -> int | None:
  for name in names:
    token_id = tok.token_to_id(name)
    if token_id is not None:
      return token_id
  return None


def _read_bytes(path: str, what: str) -> bytes:
  p = epath.Path(path)
  if not p.is_file():
    raise TokenizerError(f"{what} file not found: {path}")
  return p.read_bytes()
