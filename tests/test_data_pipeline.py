"""The grain pipeline: contract, determinism, resume, sharding, packing, mixtures."""

import json
import re

from absl import flags
import numpy as np
import pytest

from drope_jax import config as config_lib
from drope_jax.data import pipeline
from drope_jax.data import prepare as prepare_lib
from drope_jax.data import sources
from drope_jax.data import tokenizers

BYTE = tokenizers.get_tokenizer("byte")
KEYS = ("inputs", "targets", "positions", "segment_ids", "weights")


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  # grain worker processes need parsed absl flags (absl.app.run does it).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def data_config(**overrides):
  config = config_lib.base_config().data
  config.update(overrides)
  return config


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    for key in KEYS:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("packing", pipeline.PACKINGS)
def test_batches_follow_the_contract(packing):
  batch = next(pipeline.make_iterator(data_config(packing=packing), seq_len=64,
                                      batch_size=3, seed=0))
  assert set(batch) == set(KEYS)
  for key in KEYS:
    assert batch[key].shape == (3, 64)
    assert batch[key].dtype == (np.float32 if key == "weights" else np.int32)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_same_seed_same_batches_other_seed_other_batches():
  config = data_config()
  run = lambda seed: take(pipeline.make_iterator(
      config, seq_len=64, batch_size=4, seed=seed), 3)
  assert_same_batches(run(7), run(7))
  assert not np.array_equal(run(7)[0]["inputs"], run(8)[0]["inputs"])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("packing", pipeline.PACKINGS)
def test_resume_from_saved_state_continues_identically(workers, packing):
  config = data_config(packing=packing, num_workers=workers, document_mask=True)
  make = lambda: pipeline.make_iterator(config, seq_len=48, batch_size=2, seed=3)
  iterator = make()
  take(iterator, 5)
  # grain.checkpoint.CheckpointSave stores the state as JSON.
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 4)
  iterator.close()
  resumed = make()
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 4))
  resumed.close()


@pytest.mark.parametrize("shard_count", [2, 4])
@pytest.mark.parametrize("packing", pipeline.PACKINGS)
def test_processes_get_disjoint_slices_of_the_global_batch(shard_count, packing):
  config = data_config(packing=packing, document_mask=True)
  global_batch = 8
  expected = take(pipeline.make_iterator(config, seq_len=32,
                                         batch_size=global_batch, seed=1), 3)
  slices = [take(pipeline.make_iterator(
      config, seq_len=32, batch_size=global_batch // shard_count, seed=1,
      shard_index=index, shard_count=shard_count), 3)
            for index in range(shard_count)]
  for step, batch in enumerate(expected):
    for key in KEYS:
      np.testing.assert_array_equal(
          np.concatenate([s[step][key] for s in slices]), batch[key])


def test_processes_read_disjoint_documents_that_cover_an_epoch(tmp_path):
  texts = [f"<{i:03d}>" + "x" * (i % 20) for i in range(60)]
  (tmp_path / "docs.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in texts))
  out = str(tmp_path / "out")
  prepare_lib.prepare(input_patterns=str(tmp_path / "docs.jsonl"), output=out,
                      tokenizer_spec="byte", eval_fraction=0.0)
  config = data_config(source="shards", paths=out, packing="first_fit",
                       document_mask=True)
  seen = []
  for index in range(2):
    batches = pipeline.make_iterator(config, seq_len=32, batch_size=2, seed=0,
                                     shard_index=index, shard_count=2,
                                     num_epochs=1)
    text = "".join(BYTE.decode(row) for b in batches for row in b["inputs"])
    seen.append(re.findall(r"<\d{3}>", text))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(t[:5] for t in texts)


def test_concat_fills_every_position():
  for batch in take(pipeline.make_iterator(data_config(), seq_len=64,
                                           batch_size=4, seed=0), 20):
    assert (batch["segment_ids"] == 1).all()
    assert (batch["weights"] == 1).all()
    np.testing.assert_array_equal(batch["positions"],
                                  np.broadcast_to(np.arange(64), (4, 64)))


def check_document_rows(batch, eos_id):
  """Segments are documents: positions restart, no target or EOS crosses."""
  for row in range(len(batch["inputs"])):
    segments = batch["segment_ids"][row]
    positions = batch["positions"][row]
    weights = batch["weights"][row]
    inputs = batch["inputs"][row]
    real = segments != 0
    assert real[:real.sum()].all()  # padding only at the end.
    assert (np.diff(segments[real]) >= 0).all()
    starts = np.flatnonzero(real & np.append(True, segments[1:] != segments[:-1]))
    for start, stop in zip(starts, np.append(starts[1:], real.sum())):
      np.testing.assert_array_equal(positions[start:stop], np.arange(stop - start))
      eos = np.flatnonzero(inputs[start:stop] == eos_id)
      assert (eos == stop - start - 1).all(), "EOS inside a segment"
    crossing = np.append(segments[1:] != segments[:-1], False)
    assert (weights[crossing] == 0).all()
    assert (weights[~real] == 0).all()
    assert (weights[inputs == eos_id] == 0).all()


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory):
  """Prepared byte shards of 300 documents of 1..150 bytes."""
  directory = tmp_path_factory.mktemp("short")
  rng = np.random.default_rng(0)
  texts = ["".join(rng.choice(list("abcdefgh \n"), rng.integers(1, 151)))
           for _ in range(300)]
  (directory / "docs.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in texts))
  prepare_lib.prepare(input_patterns=str(directory / "docs.jsonl"),
                      output=str(directory / "out"), tokenizer_spec="byte")
  return str(directory / "out")


@pytest.mark.parametrize("packing", pipeline.PACKINGS)
def test_document_mask_keeps_attention_and_targets_inside_documents(
    packing, short_documents):
  config = data_config(source="shards", paths=short_documents, packing=packing,
                       document_mask=True)
  batches = take(pipeline.make_iterator(config, seq_len=64, batch_size=4,
                                        seed=0), 30)
  for batch in batches:
    check_document_rows(batch, BYTE.eos_id)
  segments_per_row = max(b["segment_ids"].max() for b in batches)
  assert segments_per_row > 1  # several documents did share a row.


def test_without_document_mask_first_fit_counts_positions_up():
  config = data_config(packing="first_fit", document_mask=False)
  for batch in take(pipeline.make_iterator(config, seq_len=64, batch_size=4,
                                           seed=0), 10):
    assert set(np.unique(batch["segment_ids"])) <= {0, 1}
    np.testing.assert_array_equal(batch["positions"],
                                  np.broadcast_to(np.arange(64), (4, 64)))
    assert (batch["weights"][batch["inputs"] == BYTE.eos_id] == 0).all()


def test_eval_split_is_held_out_finite_and_complete():
  root, train = sources.stdlib_files("train", 0.05)
  _, held_out = sources.stdlib_files("eval", 0.05)
  assert held_out and not set(train) & set(held_out)
  batches = list(pipeline.make_iterator(data_config(), seq_len=256,
                                        batch_size=4, seed=0, split="eval",
                                        num_epochs=1))
  tokens = sum(len((root / f).read_bytes()) + 1 for f in held_out)
  real = sum(int((b["segment_ids"] != 0).sum()) for b in batches)
  # A full window also holds its last target; the last window of a lane does not.
  last_targets = sum(int((b["weights"][:, -1] > 0).sum()) for b in batches)
  assert real + last_targets == tokens


def prepared(directory, text, count):
  (directory / "in").mkdir(parents=True)
  (directory / "in" / "docs.jsonl").write_text(
      "".join(json.dumps({"text": text}) + "\n" for _ in range(count)))
  prepare_lib.prepare(input_patterns=str(directory / "in" / "docs.jsonl"),
                      output=str(directory / "out"), tokenizer_spec="byte",
                      eval_fraction=0.0)
  return str(directory / "out")


def test_mixture_weights_are_met(tmp_path):
  a = prepared(tmp_path / "a", "a" * 40, 50)
  b = prepared(tmp_path / "b", "b" * 40, 50)
  config = data_config(source="shards", paths=f"{a},{b}", weights="3,1")
  counts = {"a": 0, "b": 0}
  for batch in take(pipeline.make_iterator(config, seq_len=64, batch_size=8,
                                           seed=0), 40):
    counts["a"] += int((batch["inputs"] == ord("a")).sum())
    counts["b"] += int((batch["inputs"] == ord("b")).sum())
  share = counts["a"] / (counts["a"] + counts["b"])
  assert abs(share - 0.75) < 0.02, share


def test_needles_mix_into_training():
  config = data_config(source="stdlib,needles", weights="1,1", needle_variants="single",
                       packing="first_fit", document_mask=True)
  batches = take(pipeline.make_iterator(config, seq_len=512, batch_size=2,
                                        seed=0), 4)
  text = "".join(BYTE.decode(row) for b in batches for row in b["inputs"])
  assert "What are all the special magic numbers for" in text


@pytest.mark.parametrize("overrides, message", [
    (dict(packing="best"), "unknown data.packing 'best'"),
    (dict(source="stdlib,needles", weights="1"), "must be 2 non-negative"),
    (dict(source="web"), "unknown data.source 'web'"),
    (dict(source="shards"), "needs data.paths"),
])
def test_bad_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    pipeline.make_iterator(data_config(**overrides), seq_len=32, batch_size=1,
                           seed=0)


def test_shards_of_another_tokenizer_are_refused(tmp_path):
  out = prepared(tmp_path, "hello", 3)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  manifest["tokenizer"] = {"kind": "hf", "sha256": "0", "vocab_size": 9}
  (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="set --config.data.tokenizer"):
    pipeline.make_iterator(data_config(source="shards", paths=out), seq_len=32,
                           batch_size=1, seed=0)
