"""Where documents come from: raw text files, the stdlib corpus, prepared shards.

Raw text (`expand_paths`, `read_texts`) feeds `prepare` and `train_tokenizer`.
The pipeline reads token documents (int32 arrays, no EOS) from:
  * `StdlibSource`: the Python standard library's own .py files, one document
    per file, tokenized on first use and cached in memory. The embedded default.
  * `ShardSource`: a directory written by `prepare`:
      DIR/manifest.json              tokenizer identity, counts, checksums
      DIR/train-NNNNN.array_record   training documents
      DIR/eval-NNNNN.array_record    held-out documents (see `in_eval_split`)
    Each record is one document's token ids as little-endian uint16, uint32 or
    int32, as the manifest's `dtype` says. The directory may be on gs://: the
    ArrayRecord reader opens local files only, so each shard is first copied to a
    local cache ($DROPE_DATA_CACHE, default ~/.cache/drope_jax/shards) under its
    SHA-256, checked against the manifest; a cached shard is not fetched again.

Both hold documents out for evaluation by a stable hash of a document key, so
the eval split never overlaps the training split and never moves.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import sysconfig
from collections.abc import Iterator

from etils import epath
import grain
import numpy as np

from drope_jax import errors
from drope_jax import gcs
from drope_jax.data import tokenizers as tokenizers_lib

SPLITS = ("train", "eval")
# More invalid UTF-8 than this in a text file, and it is a binary file, not text.
_MAX_INVALID_SHARE = 0.3
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "drope_jax.token_shards.v1"
TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")

# Not part of the standard library proper: installed packages and test data.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test",
     "__pycache__"})


class InputError(errors.BadInput, ValueError):
  """Input that cannot be read as asked; the message names the file and fix."""


def in_eval_split(key: str, eval_fraction: float) -> bool:
  """Stable across runs, machines and Python versions (unlike `hash`)."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little") / 2**64 < eval_fraction


def document_key(path: str, index: int) -> str:
  """Names a raw-text document for `in_eval_split`: the file's name (not its
  directory, so a moved corpus keeps its split) and its index in the file."""
  return f"{epath.Path(path).name}:{index}"


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.array_record"


# ---------------------------------------------------------------- raw text ---


@dataclasses.dataclass
class ReadStats:
  """What reading raw text skipped or repaired, for reports and manifests."""
  documents: int = 0
  empty_documents: int = 0
  invalid_utf8_documents: int = 0
  empty_files: list[str] = dataclasses.field(default_factory=list)


def expand_paths(patterns: str) -> list[str]:
  """Files matching comma-separated globs (local or gs://), sorted per glob."""
  paths = []
  for pattern in filter(None, (p.strip() for p in patterns.split(","))):
    matches = _glob(pattern)
    if not matches:
      raise InputError(f"no files match {pattern!r}: check the path.")
    for path in matches:
      if not path.endswith(TEXT_SUFFIXES):
        raise InputError(
            f"cannot read {path}: supported inputs end with "
            f"{', '.join(TEXT_SUFFIXES)}.")
    paths.extend(matches)
  if not paths:
    raise InputError("no input files given.")
  return paths


def read_texts(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
  """Documents of one file: a .txt file is one document; .jsonl(.gz) one per
  line (its `text_field`); .parquet one per row (its `text_field` column).

  Empty documents are skipped and invalid UTF-8 is replaced; both are counted.
  """
  before = stats.documents
  if path.endswith(".txt"):
    texts = [_text_file(path, stats)]
  elif path.endswith((".jsonl", ".jsonl.gz")):
    texts = _read_jsonl(path, text_field, stats)
  else:
    texts = _read_parquet(path, text_field, stats)
  for text in texts:
    if not text:
      stats.empty_documents += 1
      continue
    stats.documents += 1
    yield text
  if stats.documents == before:
    stats.empty_files.append(path)


def _glob(pattern: str) -> list[str]:
  if not any(c in pattern for c in "*?["):
    return [pattern] if epath.Path(pattern).is_file() else []
  parts = pattern.split("/")
  fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
  root = epath.Path("/".join(parts[:fixed]) or ".")
  if not root.is_dir():
    return []
  return sorted(str(p) for p in root.glob("/".join(parts[fixed:])) if p.is_file())


def _text_file(path: str, stats: ReadStats) -> str:
  """A .txt file's text; InputError when it is not text at all (a binary file)."""
  text = _decode(epath.Path(path).read_bytes(), stats)
  invalid = text.count("\ufffd") + text.count("\x00")
  if invalid > _MAX_INVALID_SHARE * len(text):
    raise InputError(
        f"{path} is not text: {invalid / len(text):.0%} of its characters are invalid "
        "UTF-8 or NUL. Give UTF-8 text files (or JSON lines / Parquet with a text "
        "field), not binary ones.")
  return text


def _decode(data: bytes, stats: ReadStats) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    stats.invalid_utf8_documents += 1
    return data.decode("utf-8", errors="replace")


def _read_jsonl(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
  with epath.Path(path).open("rb") as raw:
    f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(_decode(line, stats))
      except json.JSONDecodeError as e:
        raise InputError(f"{path}:{line_number}: not valid JSON ({e}).") from e
      if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else "none"
        raise InputError(
            f"{path}:{line_number}: no field {text_field!r} (fields: {keys}); "
            "pass --text_field=<the field holding the text>.")
      text = record[text_field] or ""
      if not isinstance(text, str):
        raise InputError(
            f"{path}:{line_number}: field {text_field!r} is "
            f"{type(text).__name__}, not text.")
      yield _without_surrogates(text, stats)


def _without_surrogates(text: str, stats: ReadStats) -> str:
  # JSON may escape lone surrogates ("\udc80"), which are not encodable UTF-8.
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    stats.invalid_utf8_documents += 1
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _read_parquet(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with epath.Path(path).open("rb") as f:
    try:
      parquet = pq.ParquetFile(io.BytesIO(f.read()))
    except pyarrow.ArrowException as e:
      raise InputError(f"{path} is not a readable Parquet file ({e}): give a complete "
                       ".parquet file, or leave it out of --input") from e
  if text_field not in parquet.schema_arrow.names:
    raise InputError(
        f"{path}: no column {text_field!r} (columns: "
        f"{', '.join(parquet.schema_arrow.names)}); pass --text_field=<column>.")
  for batch in parquet.iter_batches(columns=[text_field]):
    for text in batch.column(0).to_pylist():
      yield _without_surrogates(text or "", stats)


# ----------------------------------------------------------------- stdlib ---


def stdlib_files(split: str, eval_fraction: float) -> tuple[pathlib.Path, list[str]]:
  """The stdlib root and its .py files in `split`, as sorted relative paths."""
  _check_split(split)
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _STDLIB_SKIP_DIRS)
    relative = pathlib.Path(directory).relative_to(root)
    files.extend(str(relative / n) for n in names if n.endswith(".py"))
  files.sort()
  held_out = [in_eval_split(f, eval_fraction) for f in files]
  return root, [f for f, e in zip(files, held_out) if e == (split == "eval")]


class StdlibSource:
  """The stdlib's .py files as token documents, tokenized on first use."""

  def __init__(self, tokenizer: tokenizers_lib.Tokenizer, split: str,
               eval_fraction: float):
    self._root, self._files = stdlib_files(split, eval_fraction)
    if not self._files:
      raise InputError(
          f"the stdlib corpus has no {split} documents with "
          f"eval_fraction={eval_fraction}.")
    self._tokenizer = tokenizer
    self._cache = {}

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> np.ndarray:
    tokens = self._cache.get(index)
    if tokens is None:
      text = self.text(index)
      tokens = self._cache[index] = self._tokenizer.encode_array(text)
    return tokens

  def text(self, index: int) -> str:
    data = (self._root / self._files[index]).read_bytes()
    return data.decode("utf-8", errors="replace")

  def __getstate__(self):
    # Worker processes fill their own cache; do not ship this one.
    return {**self.__dict__, "_cache": {}}

  def __repr__(self) -> str:
    return f"StdlibSource({len(self)} files under {self._root})"


# ----------------------------------------------------------------- shards ---


def read_manifest(directory: str) -> dict:
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    raise InputError(
        f"{directory} is not a prepared data directory (no {MANIFEST}): "
        "make one with `python -m drope_jax.data.prepare`.")
  return json.loads(path.read_text())


class ShardSource:
  """One split of a `prepare`d directory as token documents."""

  def __init__(self, directory: str, split: str,
               tokenizer: tokenizers_lib.Tokenizer):
    _check_split(split)
    if "://" in directory:
      gcs.check_reachable(directory)
    manifest = read_manifest(directory)
    if not manifest.get("complete"):
      raise InputError(
          f"{directory} was not finished by prepare: run the same prepare "
          "command again to complete it.")
    if manifest["tokenizer"] != tokenizer.identity:
      raise InputError(
          f"{directory} was tokenized by {manifest['tokenizer_spec']!r} "
          f"({manifest['tokenizer']}), but data.tokenizer is {tokenizer.spec!r} "
          f"({tokenizer.identity}): set --config.data.tokenizer to the one "
          "the shards were made with.")
    shards = manifest["splits"][split]["shards"]
    if not shards:
      fraction = manifest["settings"]["eval_fraction"]
      fix = ("a larger --eval_fraction" if split == "eval" else
             "a smaller --eval_fraction" if fraction > 0 else "more documents")
      raise InputError(
          f"{directory} has no {split} documents (prepared with --eval_fraction="
          f"{fraction} from {manifest.get('documents', 0)} documents): prepare it "
          f"again into a new --output with {fix}.")
    self._paths = [str(epath.Path(directory) / s["file"]) for s in shards]
    if "://" in directory:  # the ArrayRecord reader hangs on gs:// (0.8.6).
      self._paths = [local_copy(p, s["sha256"]) for p, s in zip(self._paths, shards)]
    self._records = grain.sources.ArrayRecordDataSource(self._paths)
    self._dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    self._directory = directory

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> np.ndarray:
    return np.frombuffer(self._records[index], dtype=self._dtype).astype(np.int32)

  def __repr__(self) -> str:
    return f"ShardSource({self._directory}: {len(self)} documents)"


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "DROPE_DATA_CACHE", pathlib.Path.home() / ".cache" / "drope_jax" / "shards"))


def local_copy(remote: str, sha256: str) -> str:
  """A local copy of the shard at `remote` whose content has this SHA-256."""
  local = cache_dir() / f"{sha256}.array_record"
  if local.exists():
    return str(local)
  local.parent.mkdir(parents=True, exist_ok=True)
  # A unique partial name: processes of one host may fetch the same shard at once.
  partial = local.with_name(f".{local.name}.{os.getpid()}.partial")
  digest = hashlib.sha256()
  with epath.Path(remote).open("rb") as src, partial.open("wb") as dst:
    for block in iter(lambda: src.read(1 << 24), b""):
      digest.update(block)
      dst.write(block)
  if digest.hexdigest() != sha256:
    partial.unlink()
    raise InputError(
        f"{remote} does not match its manifest (SHA-256 {digest.hexdigest()[:12]}..., "
        f"expected {sha256[:12]}...): the shard changed or was damaged; prepare the "
        "directory again.")
  os.replace(partial, local)
  return str(local)


def token_dtype(vocab_size: int) -> np.dtype:
  """The narrowest unsigned type for the ids: half the bytes of int32 mostly."""
  if vocab_size <= 2**16:
    return np.dtype("<u2")
  return np.dtype("<u4")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}.")
