"""Held-out text for the long-context evaluations: token streams and haystack prose.

Two origins, one interface:
  * the run's own eval split (`data` section of its config), read through the grain
    pipeline with concatenation packing and no document mask, so windows are plain
    contiguous tokens;
  * `eval_data`: comma-separated globs of .txt / .jsonl(.gz) / .parquet files,
    tokenized with the run's tokenizer, each document ending in EOS as in training.

The stream starts at the same document whatever length is evaluated, so every length
sees the same text (longer windows just see it in fewer, longer pieces).
"""

from collections.abc import Iterator, Sequence

import numpy as np

from drope_jax.data import pipeline
from drope_jax.data import sources
from drope_jax.data import tasks
from drope_jax.data import tokenizers

_READ_ROW = 4096  # Tokens per pipeline row when reading the eval split.


def token_stream(config, num_tokens: int, *, eval_data: str | None = None,
                 text_field: str = "text") -> np.ndarray:
  """Up to `num_tokens` held-out token ids (int32), documents joined by EOS."""
  chunks, total = [], 0
  for document in _token_documents(config, eval_data, text_field):
    chunks.append(document)
    total += len(document)
    if total >= num_tokens:
      break
  if not chunks:
    raise sources.InputError("the held-out data holds no tokens")
  return np.concatenate(chunks)[:num_tokens].astype(np.int32)


def text(config, num_tokens: int, *, eval_data: str | None = None,
         text_field: str = "text") -> str:
  """About `num_tokens` tokens of held-out text, documents separated by blank lines."""
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  if eval_data:
    return "\n\n".join(_texts(eval_data, text_field, tokenizer, num_tokens))
  stream = token_stream(config, num_tokens)
  documents = np.split(stream, np.flatnonzero(stream == tokenizer.eos_id))
  return "\n\n".join(d for d in (tokenizer.decode(d).strip() for d in documents) if d)


def windows(stream: np.ndarray, length: int, count: int,
            prefix: Sequence[int] = ()) -> np.ndarray:
  """[count', length + 1] windows from the start of `stream` (count' <= count), each the
  `prefix` (none or one token: drope_jax/data/framing.py) then contiguous tokens:
  inputs are [:, :-1], targets [:, 1:]."""
  piece = length + 1 - len(prefix)
  count = min(count, (len(stream) - piece) // length + 1)
  if count < 1:
    raise sources.InputError(
        f"the held-out data has {len(stream)} tokens, fewer than one window of "
        f"{piece}: raise --eval_tokens, give more --eval_data or lower --lengths")
  # Pieces start `length` apart so that every token is predicted exactly once: without
  # a prefix they overlap by one (a piece's first token is its input only); after a
  # one-token prefix they do not (the prefix predicts the first).
  starts = np.arange(count) * length
  return np.stack([np.concatenate([prefix, stream[s:s + piece]]) for s in starts]
                  ).astype(stream.dtype)


def _token_documents(config, eval_data, text_field) -> Iterator[np.ndarray]:
  if eval_data:
    tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    eos = np.array([tokenizer.eos_id], np.int32)
    for document in _texts(eval_data, text_field, tokenizer, None):
      yield np.concatenate([tokenizer.encode_array(document), eos])
    return
  yield from _eval_split_rows(config)


def _eval_split_rows(config) -> Iterator[np.ndarray]:
  """The eval split as consecutive pieces of one contiguous token stream."""
  data_config = config.data.copy_and_resolve_references()
  with data_config.unlocked():
    data_config.source, data_config.weights = _prose_components(data_config)
    data_config.packing = "concat"
    data_config.document_mask = False
    data_config.num_workers = 0
  rows = pipeline.make_iterator(data_config, seq_len=_READ_ROW, batch_size=1,
                                seed=config.seed, split="eval", num_epochs=1)
  for batch in rows:
    real = batch["segment_ids"][0] != 0
    piece = batch["inputs"][0][real]
    if real.all() and batch["weights"][0, -1] > 0:
      # Concat packing cuts windows of _READ_ROW + 1: the last target ends the piece.
      piece = np.append(piece, batch["targets"][0, -1])
    yield piece
    if not real.all():
      return


def _prose_components(data_config) -> tuple[str, str | None]:
  """The mixture without its synthetic components (needles, tasks): held-out text is
  prose."""
  synthetic = {"needles", *tasks.TASKS}
  names = pipeline.component_names(data_config)
  weights = (data_config.weights.split(",") if data_config.weights
             else ["1"] * len(names))
  kept = [w for name, w in zip(names, weights) if name not in synthetic]
  if not kept:
    raise sources.InputError(
        "the run trained on synthetic documents only (needles or a task): give held-out "
        "prose with --eval_data")
  source = ",".join(s for s in data_config.source.split(",")
                    if s.strip() not in synthetic)
  return source, ",".join(kept)


def _texts(patterns, text_field, tokenizer, num_tokens) -> Iterator[str]:
  """Documents of the files in order; stops once about `num_tokens` are read."""
  stats, seen = sources.ReadStats(), 0
  for path in sources.expand_paths(patterns):
    for document in sources.read_texts(path, text_field, stats):
      yield document
      if num_tokens is not None:
        seen += len(tokenizer.encode(document))
        if seen >= num_tokens:
          return
