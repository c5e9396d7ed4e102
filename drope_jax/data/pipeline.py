"""The grain pipeline: documents -> shuffled, packed, sharded batches.

A batch is a dict of numpy arrays, each [batch_size, seq_len]:
  inputs, targets   int32 token ids (targets = inputs shifted by one).
  positions         int32 position of each input token.
  segment_ids       int32; 0 = padding.
  weights           float32; 1 where the target counts in the loss.

How a global batch is built, so that any number of processes see the batches
one process would (row for row):
  1. Documents of each source are shuffled globally by seed (a new order each
     epoch), repeated for `num_epochs`, mixed by `data.weights`, and end in EOS.
  2. Row r of every global batch is its own lane: lane r packs documents
     r, r + G, r + 2G, ... of that stream (G = global batch size).
  3. Process p builds lanes p * batch_size ... (p + 1) * batch_size - 1 only.
  Worker processes (`data.num_workers`) each take every W-th document of each
  lane, and batches come from the workers in turn: the output depends on
  `num_workers` (deterministically), so keep it fixed across a resumed run.

Packing (`data.packing`), on windows of seq_len + 1 tokens:
  concat      documents are concatenated and cut into windows: no padding;
              long documents continue in the next window of their lane.
  first_fit   documents (split into pieces of at most seq_len + 1 tokens) are
              placed whole into `data.packing_bins` bins with first-fit; the
              rest is padding. The target of a piece's last token is never the
              next piece's first token: weight 0 there.
`data.document_mask`: True gives each document its own segment id and
positions from 0 (attention stays inside documents, and the target across a
document boundary gets weight 0); False gives segment id 1 to every real token
and positions 0..seq_len-1 (attention crosses documents).

Mixture components are listed by `data.source`, comma-separated: `stdlib`,
`needles`, `shards` (one component per directory in `data.paths`), and the synthetic
tasks `recall`, `copy`, `induction` (drope_jax/data/tasks; documents of seq_len
tokens, settings in `data.task`). `data.weights` gives each component's share of
documents. With a task in the mixture every document also carries a `loss_mask`
(the task's answers, or all tokens; all tokens for prose) that the batch's
`weights` honour.
"""

import sys

from absl import logging
import grain
import ml_collections
import numpy as np

from drope_jax.data import needles as needles_lib
from drope_jax.data import sources as sources_lib
from drope_jax.data import tasks as tasks_lib
from drope_jax.data import tokenizers as tokenizers_lib

PACKINGS = ("concat", "first_fit")
SOURCES = ("stdlib", "shards", "needles", *tasks_lib.TASKS)

# Lanes read synchronously: parallelism comes from worker processes instead,
# and a thread pool per lane would multiply threads by the batch size.
_LANE_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def make_tokenizer(data_config: ml_collections.ConfigDict
                   ) -> tokenizers_lib.Tokenizer:
  return tokenizers_lib.get_tokenizer(data_config.tokenizer)


def make_dataset(data_config: ml_collections.ConfigDict, *, seq_len: int,
                 batch_size: int, seed: int, split: str = "train",
                 shard_index: int = 0, shard_count: int = 1,
                 num_epochs: int | None = None) -> grain.IterDataset:
  """The dataset behind `make_iterator` (same arguments)."""
  if data_config.packing not in PACKINGS:
    raise ValueError(f"unknown data.packing {data_config.packing!r}: use one "
                     f"of {', '.join(PACKINGS)}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} is outside shard_count="
                     f"{shard_count}.")
  tokenizer = make_tokenizer(data_config)
  documents = _documents(data_config, tokenizer, seq_len=seq_len, seed=seed,
                         split=split, num_epochs=num_epochs)
  lanes = batch_size * shard_count
  first = shard_index * batch_size
  rows = [_lane(documents[lane::lanes], data_config, seq_len, tokenizer.pad_id,
                masked=_has_task(data_config))
          for lane in range(first, first + batch_size)]
  dataset = _LanesToBatch(rows, _padding_row(seq_len, tokenizer.pad_id))
  if data_config.num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.num_workers, per_worker_buffer_size=2))
  return dataset


def make_iterator(data_config: ml_collections.ConfigDict, *, seq_len: int,
                  batch_size: int, seed: int, split: str = "train",
                  shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Batches of `split` for one process (see the module docstring).

  Args:
    data_config: the config's `data` section.
    seq_len: tokens per row.
    batch_size: rows per batch for THIS process (global batch / shard_count).
    seed: shuffle seed; the eval split is not shuffled.
    split: "train" or "eval" (the held-out documents).
    shard_index: this process's index, jax.process_index().
    shard_count: number of processes, jax.process_count().
    num_epochs: passes over the documents; None repeats forever. When a lane
      runs out its rows become padding (weights 0) until all have; processes
      may then run out after different numbers of batches, so multi-process
      loops should take a fixed number of batches.

  Returns:
    An iterator of batch dicts whose get_state()/set_state() can be saved with
    grain.checkpoint.CheckpointSave / CheckpointRestore. With
    `data.num_workers` > 0, absl flags must be parsed (absl.app.run does it).
  """
  return iter(make_dataset(
      data_config, seq_len=seq_len, batch_size=batch_size, seed=seed,
      split=split, shard_index=shard_index, shard_count=shard_count,
      num_epochs=num_epochs))


def check(data_config: ml_collections.ConfigDict, seq_len: int) -> None:
  """Raises if the sources or their mixture weights cannot be read as configured."""
  names = component_names(data_config)
  _weights(data_config, len(names))
  params = tasks_lib.Params.from_config(data_config.task)
  for name in names:
    if name in tasks_lib.TASKS:
      tasks_lib.check(name, params, seq_len)
      tasks_lib.token_ranges(make_tokenizer(data_config), params)


def _has_task(data_config) -> bool:
  return any(name in tasks_lib.TASKS for name in component_names(data_config))


# --------------------------------------------------------------- documents ---


def component_names(data_config) -> list[str]:
  names = []
  for source in (s.strip() for s in data_config.source.split(",")):
    if source not in SOURCES:
      raise sources_lib.InputError(f"unknown data.source {source!r}: use one of "
                       f"{', '.join(SOURCES)} (comma-separated for a mixture).")
    if source == "shards":
      if not data_config.paths:
        raise sources_lib.InputError("data.source=shards needs data.paths: comma-separated "
                         "directories written by drope_jax.data.prepare.")
      names.extend(f"shards:{p.strip()}" for p in data_config.paths.split(","))
    else:
      names.append(source)
  return names


def _weights(data_config, count: int) -> list[float]:
  if not data_config.weights:
    return [1.0 / count] * count
  try:
    weights = [float(w) for w in data_config.weights.split(",")]
  except ValueError:
    weights = []
  if len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
    raise sources_lib.InputError(
        f"data.weights={data_config.weights!r} must be {count} non-negative "
        f"numbers, one per mixture component ({', '.join(component_names(data_config))}).")
  return [w / sum(weights) for w in weights]


def _source(name: str, data_config, tokenizer, *, seq_len: int, split: str):
  if name == "stdlib":
    return sources_lib.StdlibSource(tokenizer, split, data_config.eval_fraction)
  if name.startswith("shards:"):
    return sources_lib.ShardSource(name.partition(":")[2], split, tokenizer)
  if name in tasks_lib.TASKS:
    return tasks_lib.TaskSource(name, tokenizer,
                                tasks_lib.Params.from_config(data_config.task),
                                length=seq_len, split=split)
  if data_config.needle_haystack == "stdlib":
    haystack = needles_lib.stdlib_haystack(split, data_config.eval_fraction)
  else:
    haystack = needles_lib.text_haystack(
        data_config.needle_haystack, data_config.text_field, split,
        data_config.eval_fraction)
  size = data_config.needle_docs
  return needles_lib.NeedleSource(
      haystack, tokenizer,
      size=size if split == "train" else max(1, round(size * data_config.eval_fraction)),
      min_tokens=data_config.needle_min_tokens,
      max_tokens=data_config.needle_max_tokens or seq_len,
      variants=[v.strip() for v in data_config.needle_variants.split(",")],
      seed=sources_lib.SPLITS.index(split))


def _documents(data_config, tokenizer, *, seq_len: int, seed: int, split: str,
               num_epochs: int | None) -> grain.MapDataset:
  """Token documents ending in EOS, in training order, as one stream."""
  names = component_names(data_config)
  weights = _weights(data_config, len(names))
  components = []
  for index, name in enumerate(names):
    source = _source(name, data_config, tokenizer, seq_len=seq_len, split=split)
    logging.info("data %s split: %r", split, source)
    dataset = grain.MapDataset.source(source)
    if split == "train":
      dataset = dataset.shuffle(seed=(seed * 1_000_003 + index) % 2**32)
    components.append(dataset.repeat(num_epochs))
  if len(components) == 1:
    documents = components[0]
  else:
    documents = grain.MapDataset.mix(components, weights)
  return documents.map(_EndWithEos(tokenizer.eos_id, masked=_has_task(data_config)))


class _EndWithEos:
  """A document (token ids, or a task's tokens + loss_mask) -> {"tokens"[, "loss_mask"]}
  ending in EOS. The EOS counts as a target where the document's last token does."""

  def __init__(self, eos_id: int, *, masked: bool):
    self._eos = np.array([eos_id], np.int32)
    self._masked = masked

  def __call__(self, document) -> dict[str, np.ndarray]:
    if not isinstance(document, dict):
      document = {"tokens": document, "loss_mask": np.ones(len(document), bool)}
    example = {"tokens": np.concatenate([document["tokens"], self._eos])}
    if self._masked:
      mask = document["loss_mask"]
      example["loss_mask"] = np.concatenate([mask, mask[-1:]]).astype(np.int32)
    return example


# ------------------------------------------------------------------ packing ---


def _lane(documents: grain.MapDataset, data_config, seq_len: int,
          pad_id: int, *, masked: bool) -> grain.IterDataset:
  """One row position of the global batch: its documents, packed."""
  dataset = documents.to_iter_dataset(_LANE_READ_OPTIONS)
  window = {"tokens": seq_len + 1}
  if masked:
    window["loss_mask"] = seq_len + 1
  if data_config.packing == "concat":
    dataset = grain.experimental.ConcatThenSplitIterDataset(
        dataset, length_struct=window)
  else:
    dataset = grain.experimental.FlatMapIterDataset(
        dataset, _SplitDocument(seq_len + 1))
    dataset = grain.experimental.FirstFitPackIterDataset(
        dataset, length_struct=window,
        num_packing_bins=data_config.packing_bins, shuffle_bins=False)
  return dataset.map(_Features(
      seq_len, pad_id, document_mask=data_config.document_mask,
      cross_document_targets=(data_config.packing == "concat"
                              and not data_config.document_mask)))


class _SplitDocument(grain.experimental.FlatMapTransform):
  """Pieces of at most `length` tokens: first-fit packs only what fits."""

  def __init__(self, length: int):
    self.length = length
    self.max_fan_out = sys.maxsize

  def flat_map(self, element):
    return [{k: v[i:i + self.length] for k, v in element.items()}
            for i in range(0, len(element["tokens"]), self.length)]


class _Features:
  """A packed window of seq_len + 1 tokens -> one row of the batch."""

  def __init__(self, seq_len: int, pad_id: int, *, document_mask: bool,
               cross_document_targets: bool):
    self._seq_len = seq_len
    self._pad_id = pad_id
    self._document_mask = document_mask
    self._cross_document_targets = cross_document_targets

  def __call__(self, packed):
    tokens = packed["tokens"]
    segments = packed["tokens_segment_ids"]
    real_input, real_target = segments[:-1] != 0, segments[1:] != 0
    if self._cross_document_targets:
      weights = real_target
    else:
      weights = real_input & (segments[:-1] == segments[1:])
    if "loss_mask" in packed:  # a task's answers only (task.loss=answers).
      weights = weights & (packed["loss_mask"][1:] != 0)
    if self._document_mask:
      segment_ids = segments[:-1]
      positions = packed["tokens_positions"][:-1]
    else:
      segment_ids = real_input
      positions = np.arange(self._seq_len)
    return {
        "inputs": np.where(real_input, tokens[:-1], self._pad_id).astype(np.int32),
        "targets": np.where(real_target, tokens[1:], self._pad_id).astype(np.int32),
        "positions": positions.astype(np.int32),
        "segment_ids": segment_ids.astype(np.int32),
        "weights": weights.astype(np.float32),
    }


def _padding_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  return {
      "inputs": np.full(seq_len, pad_id, np.int32),
      "targets": np.full(seq_len, pad_id, np.int32),
      "positions": np.zeros(seq_len, np.int32),
      "segment_ids": np.zeros(seq_len, np.int32),
      "weights": np.zeros(seq_len, np.float32),
  }


# ----------------------------------------------------------------- batching ---


class _LanesToBatch(grain.IterDataset):
  """Stacks one row from each lane; a finished lane gives padding rows until
  every lane has finished."""

  def __init__(self, lanes, padding_row):
    super().__init__(lanes)
    self._padding_row = padding_row

  def __iter__(self):
    return _LanesToBatchIterator(
        [lane.__iter__() for lane in self.parents], self._padding_row)

  def __str__(self) -> str:
    return f"LanesToBatch({len(self.parents)} lanes)"


class _LanesToBatchIterator(grain.DatasetIterator):

  def __init__(self, lanes, padding_row):
    super().__init__(lanes)
    self._padding_row = padding_row
    self._finished = [False] * len(lanes)

  def __next__(self):
    rows = []
    for index, lane in enumerate(self._parents):
      if not self._finished[index]:
        try:
          rows.append(next(lane))
          continue
        except StopIteration:
          self._finished[index] = True
      rows.append(self._padding_row)
    if all(self._finished):
      raise StopIteration
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

  def get_state(self):
    return {"lanes": [lane.get_state() for lane in self._parents],
            "finished": list(self._finished)}

  def set_state(self, state):
    for lane, lane_state in zip(self._parents, state["lanes"]):
      lane.set_state(_with_slice_tuples(lane_state))
    self._finished = list(state["finished"])


def _with_slice_tuples(state):
  """Undoes JSON's tuple -> list on ConcatThenSplit slices.

  grain (0.2.18) compares them with the tuple (-1, -1), so a state restored
  from a grain.checkpoint JSON file would otherwise replay a wrong remainder.
  """
  if isinstance(state, dict):
    return {key: ({k: tuple(v) for k, v in value.items()}
                  if key == "remainder_slices" else _with_slice_tuples(value))
            for key, value in state.items()}
  if isinstance(state, list):
    return [_with_slice_tuples(item) for item in state]
  return state
