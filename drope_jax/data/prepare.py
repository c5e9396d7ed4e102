r"""Tokenizes text files into ArrayRecord shards of token documents.

  python -m drope_jax.data.prepare --input='corpus/*.jsonl.gz' \
      --output=/data/corpus-byte --tokenizer=byte

Inputs (local or gs://, comma-separated globs): .txt (one document per file),
.jsonl / .jsonl.gz (one per line, --text_field), .parquet (--text_field column).
Output layout, manifest and eval split: see `drope_jax.data.sources`. A
document goes to the eval shards when `in_eval_split(file name:index)` holds,
so the split depends neither on --workers nor on the order of the globs.

Output is deterministic. Each shard is written under a temporary name and
renamed when complete (on gs:// uploaded whole), then recorded in
manifest.json, so an interrupted run is finished by running the same command
again: recorded shards are skipped and nothing finished is ever deleted. An
output directory made with another tokenizer or other settings is refused.
"""

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from absl import app
from absl import flags
from array_record.python import array_record_module
from etils import epath
import numpy as np

from drope_jax import cli
from drope_jax.data import sources
from drope_jax.data import tokenizers

# Texts per tokenizer task: big enough to amortise the pickling round trip.
_CHUNK_CHARS = 1 << 20


class _Progress:
  """Counts and rates, printed to stderr."""

  def __init__(self):
    self.start = time.monotonic()
    self.documents = 0
    self.tokens = 0
    self.tokenized = 0  # tokens made in this run (excludes skipped shards).

  def report(self, message: str) -> None:
    seconds = time.monotonic() - self.start
    rate = self.tokenized / max(seconds, 1e-9)
    print(f"[prepare {seconds:6.1f}s] {message} | {self.documents:,} docs, "
          f"{self.tokens:,} tokens, {rate / 1e6:.2f}M tokens/s",
          file=sys.stderr, flush=True)


def prepare(*, output: str, **settings) -> dict:
  """Writes the shards and manifest (settings: those of _prepare); returns the manifest.

  Input refused midway removes the output this call created: the same command would
  otherwise meet half an output, and training on it would advise the same command.
  An interrupted call keeps its shards: the same command resumes.
  """
  out = epath.Path(output)
  created_here = not out.exists()
  try:
    return _prepare(output=output, **settings)
  except sources.InputError:
    if created_here and out.exists():
      out.rmtree()
    raise


def _prepare(*, input_patterns: str, output: str, tokenizer_spec: str,
             text_field: str = "text", workers: int = 1,
             docs_per_shard: int = 1024, eval_fraction: float = 0.05) -> dict:
  tokenizer = tokenizers.get_tokenizer(tokenizer_spec)
  paths = sources.expand_paths(input_patterns)
  out = epath.Path(output)
  dtype = sources.token_dtype(tokenizer.vocab_size)
  manifest = {
      "format": sources.MANIFEST_FORMAT,
      "complete": False,
      "tokenizer_spec": tokenizer.spec,
      "tokenizer": tokenizer.identity,
      "vocab_size": tokenizer.vocab_size,
      "eos_id": tokenizer.eos_id,
      "dtype": dtype.name,
      "settings": {"text_field": text_field, "docs_per_shard": docs_per_shard,
                   "eval_fraction": eval_fraction},
      "inputs": paths,
  }
  finished = _finished_shards(out, manifest)

  stats = sources.ReadStats()
  per_file = {}
  planned = []
  progress = _Progress()
  with _Tokenizer(tokenizer_spec, workers, dtype) as tokenize:
    for split, index, texts in _shard_plan(paths, text_field, docs_per_shard,
                                           eval_fraction, stats, per_file):
      name = sources.shard_name(split, index)
      shard = finished.get(name)
      if shard is None or shard["documents"] != len(texts):
        records = tokenize(texts)
        if not out.exists():  # only now: input that fails to read writes nothing.
          out.mkdir(parents=True)
          _write_json(out / sources.MANIFEST, _with_splits(manifest, []))
        shard = finished[name] = _write_shard(out, name, records, dtype)
        progress.tokenized += shard["tokens"]
        # Recorded at once: a run stopped after this point keeps this shard.
        _write_json(out / sources.MANIFEST,
                    _with_splits(manifest, finished.values()))
        verb = "wrote"
      else:
        verb = "skipped finished"
      planned.append(shard)
      progress.documents += shard["documents"]
      progress.tokens += shard["tokens"]
      progress.report(f"{verb} {name}")

  for path in stats.empty_files:
    print(f"prepare: warning: {path} holds no documents.", file=sys.stderr)
  if stats.invalid_utf8_documents:
    print(f"prepare: warning: {stats.invalid_utf8_documents} document(s) had "
          "invalid UTF-8; the bad bytes were replaced by U+FFFD.",
          file=sys.stderr)
  if not stats.documents:
    raise sources.InputError(f"no documents in {input_patterns!r}: every "
                             "input is empty.")
  manifest = _with_splits(manifest, planned)
  if not manifest["splits"]["train"]["documents"]:
    raise sources.InputError(
        f"all {stats.documents} document(s) went to the eval split "
        f"(--eval_fraction={eval_fraction}): nothing to train on. Give more "
        "documents or a smaller --eval_fraction.")
  manifest.update(
      complete=True,
      documents=progress.documents,
      tokens=progress.tokens,
      sources=[{"path": p, "documents": per_file[p]} for p in paths],
      skipped={"empty_documents": stats.empty_documents,
               "invalid_utf8_documents": stats.invalid_utf8_documents,
               "empty_files": stats.empty_files})
  _write_json(out / sources.MANIFEST, manifest)
  progress.report(f"done: {output}")
  return manifest


def _finished_shards(out: epath.Path, manifest: dict) -> dict[str, dict]:
  """Shards an earlier run with the same settings finished, by file name."""
  if not out.exists():
    return {}
  manifest_path = out / sources.MANIFEST
  if not manifest_path.exists():
    if any(out.iterdir()):
      raise sources.InputError(
          f"{out} exists and was not made by prepare (no {sources.MANIFEST}): "
          "choose an empty or new --output.")
    return {}
  previous = json.loads(manifest_path.read_text())
  shards = [shard for split in previous.get("splits", {}).values()
            for shard in split["shards"]]
  if not previous.get("complete") and not shards:
    return {}  # An earlier run failed before writing anything: start afresh.
  for key, what in (("tokenizer", "tokenizer"), ("settings", "settings"),
                    ("inputs", "input files")):
    if previous.get(key) != manifest[key]:
      spec = previous.get("tokenizer_spec")
      raise sources.InputError(
          f"{out} was prepared with other {what} (tokenizer {spec!r}, "
          f"{key}: {previous.get(key)}; now {manifest[key]}). Nothing was "
          "changed: use another --output, or delete that directory to redo it.")
  return {shard["file"]: shard for shard in shards
          if (out / shard["file"]).exists()}


def _with_splits(manifest: dict, shards) -> dict:
  """`manifest` listing `shards` by split, in shard order, with totals."""
  splits = {}
  for split in sources.SPLITS:
    listed = sorted((s for s in shards if s["file"].startswith(f"{split}-")),
                    key=lambda s: s["file"])
    splits[split] = {"shards": listed,
                     "documents": sum(s["documents"] for s in listed),
                     "tokens": sum(s["tokens"] for s in listed)}
  return {**manifest, "splits": splits}


def _shard_plan(paths, text_field, docs_per_shard, eval_fraction, stats,
                per_file) -> Iterator[tuple[str, int, list[str]]]:
  """(split, shard index, texts) in input order; the last shards may be short."""
  pending = {split: [] for split in sources.SPLITS}
  count = dict.fromkeys(sources.SPLITS, 0)
  for path in paths:
    per_file[path] = 0
    for index, text in enumerate(sources.read_texts(path, text_field, stats)):
      per_file[path] += 1
      key = sources.document_key(path, index)
      split = "eval" if sources.in_eval_split(key, eval_fraction) else "train"
      pending[split].append(text)
      if len(pending[split]) == docs_per_shard:
        yield split, count[split], pending[split]
        pending[split] = []
        count[split] += 1
  for split, texts in pending.items():
    if texts:
      yield split, count[split], texts


class _Tokenizer:
  """texts -> encoded token records, in order, in worker processes."""

  def __init__(self, spec: str, workers: int, dtype: np.dtype):
    self._spec, self._workers, self._dtype = spec, workers, dtype
    self._pool = None

  def __enter__(self):
    # Byte "tokenizing" is a copy: shipping texts to workers would cost more.
    if self._workers > 1 and self._spec != "byte":
      # spawn: forking a process that may hold grain or tokenizer threads hangs.
      context = multiprocessing.get_context("spawn")
      self._pool = context.Pool(self._workers, initializer=_init_worker,
                                initargs=(self._spec, self._dtype.str))
    else:
      _init_worker(self._spec, self._dtype.str)
    return self

  def __exit__(self, *exc_info):
    if self._pool is not None:
      self._pool.terminate()

  def __call__(self, texts: list[str]) -> list[bytes]:
    if self._pool is None:
      return _encode(texts)
    chunks, chunk, size = [], [], 0
    for text in texts:
      chunk.append(text)
      size += len(text)
      if size >= _CHUNK_CHARS:
        chunks.append(chunk)
        chunk, size = [], 0
    if chunk:
      chunks.append(chunk)
    # One chunk per task: documents vary in size by orders of magnitude.
    return [record for records in self._pool.imap(_encode, chunks)
            for record in records]


_worker_state = {}


def _init_worker(spec: str, dtype: str) -> None:
  _worker_state["tokenizer"] = tokenizers.get_tokenizer(spec)
  _worker_state["dtype"] = np.dtype(dtype)


def _encode(texts: list[str]) -> list[bytes]:
  tokenizer, dtype = _worker_state["tokenizer"], _worker_state["dtype"]
  return [tokenizer.encode_array(text).astype(dtype).tobytes() for text in texts]


def _write_shard(out: epath.Path, name: str, records: list[bytes],
                 dtype: np.dtype) -> dict:
  """Writes a shard that is either whole or absent under its name."""
  with tempfile.TemporaryDirectory() as scratch:
    if _is_local(out):
      local = os.path.join(str(out), f".{name}.tmp")
    else:
      local = os.path.join(scratch, name)
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    digest = _sha256(local)
    if _is_local(out):
      os.replace(local, out / name)
    else:
      # An object store shows an object only once its upload is complete.
      epath.Path(local).copy(out / name, overwrite=True)
  tokens = sum(len(r) for r in records) // dtype.itemsize
  return {"file": name, "documents": len(records), "tokens": tokens,
          "sha256": digest}


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def _write_json(path: epath.Path, data: dict) -> None:
  text = json.dumps(data, indent=2, sort_keys=True) + "\n"
  if not _is_local(path):
    path.write_text(text)  # Object uploads are atomic.
    return
  staged = path.with_name(f".{path.name}.tmp")
  staged.write_text(text)
  os.replace(staged, path)


def _define_flags() -> None:
  """Only when run as a program: importing `prepare` next to other programs'
  flags (evaluate also has --text_field) must not clash."""
  flags.DEFINE_string(
      "input", None, "Comma-separated globs of .txt/.jsonl/.jsonl.gz/.parquet "
      "files, local or gs://.", required=True)
  flags.DEFINE_string(
      "output", None, "Output directory, local or gs://.", required=True)
  flags.DEFINE_string(
      "tokenizer", "byte", "byte | sentencepiece:PATH | hf:PATH")
  flags.DEFINE_string(
      "text_field", "text", "JSON field / Parquet column holding the text.")
  flags.DEFINE_integer(
      "workers", os.cpu_count(), "Tokenizer processes (1 = tokenize inline).",
      lower_bound=1)
  flags.DEFINE_integer(
      "docs_per_shard", 1024, "Documents per ArrayRecord shard.", lower_bound=1)
  flags.DEFINE_float(
      "eval_fraction", 0.05, "Share of documents held out in eval shards.",
      lower_bound=0.0, upper_bound=1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  prepare(input_patterns=f.input, output=f.output, tokenizer_spec=f.tokenizer,
          text_field=f.text_field, workers=f.workers,
          docs_per_shard=f.docs_per_shard, eval_fraction=f.eval_fraction)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
