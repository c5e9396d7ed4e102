"""`prepare`: text files -> ArrayRecord shards -> pipeline -> the same text."""

import collections
import gzip
import json
import os
import pathlib
import random
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece

from drope_jax import config as config_lib
from drope_jax.data import pipeline
from drope_jax.data import prepare as prepare_lib
from drope_jax.data import sources
from drope_jax.data import tokenizers

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("alpha", "beta", "gamma", "café", "naïve", "Ελληνικά", "日本語", "🙂",
         "x", "the", "of", "and", "return", "(1, 2)", "\n", "\n\n", "\t")


def write_corpus(directory: pathlib.Path) -> list[str]:
  """Documents of 1..3000 characters in all input formats; returns them."""
  rng = random.Random(0)
  texts = []
  for _ in range(40):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 500))]
    texts.append(" ".join(words))
  directory.mkdir(parents=True, exist_ok=True)
  with gzip.open(directory / "a.jsonl.gz", "wt", encoding="utf-8") as f:
    for i, text in enumerate(texts[:20]):
      f.write(json.dumps({"id": i, "text": text}) + "\n")
  (directory / "b.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in texts[20:28]))
  pq.write_table(pa.table({"text": texts[28:36]}), directory / "c.parquet")
  for i, text in enumerate(texts[36:]):
    (directory / f"d{i}.txt").write_text(text, encoding="utf-8")
  return texts


def run_prepare(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "drope_jax.data.prepare", *args],
      cwd=REPO, capture_output=True, text=True, check=False)


def tokenizer_spec(kind: str, directory: pathlib.Path, texts) -> str:
  if kind == "byte":
    return "byte"
  if kind == "sentencepiece":
    corpus = directory / "sp.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "sp"), vocab_size=300,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=3, minloglevel=2)
    return f"sentencepiece:{directory / 'sp.model'}"
  output = directory / "bpe.json"
  result = subprocess.run(
      [sys.executable, "-m", "drope_jax.data.train_tokenizer",
       f"--input={directory}/corpus/*", "--vocab_size=400", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  return f"hf:{output}"


def lane_documents(batches, eos_id: int) -> list[list[int]]:
  """Token documents back from concat-packed batches without document mask:
  row r of consecutive batches continues one stream, documents end in EOS."""
  streams = collections.defaultdict(list)
  for batch in batches:
    for row in range(len(batch["inputs"])):
      tokens = np.append(batch["inputs"][row], batch["targets"][row][-1])
      real = (np.append(batch["segment_ids"][row] != 0, False)
              | np.append(False, batch["weights"][row] > 0))
      streams[row].extend(tokens[real].tolist())
  documents = []
  for stream in streams.values():
    assert stream[-1] == eos_id
    document = []
    for token in stream:
      if token == eos_id:
        documents.append(document)
        document = []
      else:
        document.append(token)
  return documents


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "hf"])
def test_text_to_shards_to_pipeline_gives_back_the_documents(tmp_path, kind):
  texts = write_corpus(tmp_path / "corpus")
  spec = tokenizer_spec(kind, tmp_path, texts)
  manifest = prepare_lib.prepare(
      input_patterns=f"{tmp_path}/corpus/*.jsonl*,{tmp_path}/corpus/*.parquet,"
      f"{tmp_path}/corpus/*.txt", output=str(tmp_path / "out"),
      tokenizer_spec=spec, docs_per_shard=7, eval_fraction=0.2)
  assert manifest["complete"] and manifest["documents"] == len(texts)
  assert manifest["splits"]["eval"]["documents"] > 0

  data = config_lib.base_config().data
  data.source, data.paths, data.tokenizer = "shards", str(tmp_path / "out"), spec
  tokenizer = pipeline.make_tokenizer(data)
  decoded = {}
  for split in sources.SPLITS:
    batches = pipeline.make_iterator(data, seq_len=32, batch_size=3, seed=5,
                                     split=split, num_epochs=1)
    decoded[split] = [tokenizer.decode(d)
                      for d in lane_documents(batches, tokenizer.eos_id)]
    assert len(decoded[split]) == manifest["splits"][split]["documents"]
  assert sorted(decoded["train"] + decoded["eval"]) == sorted(texts)
  assert not set(decoded["train"]) & set(decoded["eval"])


def test_output_is_deterministic_whatever_the_workers(tmp_path):
  write_corpus(tmp_path / "corpus")
  outputs = [tmp_path / "one", tmp_path / "two"]
  manifests = [
      prepare_lib.prepare(input_patterns=f"{tmp_path}/corpus/*",
                          output=str(out), tokenizer_spec="byte",
                          workers=workers, docs_per_shard=8)
      for out, workers in zip(outputs, (1, 2))]
  assert manifests[0]["splits"] == manifests[1]["splits"]
  for shard in manifests[0]["splits"]["train"]["shards"]:
    name = shard["file"]
    assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes()


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tmp_path):
  write_corpus(tmp_path / "corpus")
  args = dict(input_patterns=f"{tmp_path}/corpus/*", output=str(tmp_path / "out"),
              tokenizer_spec="byte", docs_per_shard=6)
  first = prepare_lib.prepare(**args)
  shards = sorted((tmp_path / "out").glob("*.array_record"))
  assert len(shards) > 3
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  lost = shards[1]
  lost.unlink()  # As if the run had stopped before writing it.
  second = prepare_lib.prepare(**args)
  assert second == first
  for p in shards:
    if p != lost:
      assert p.stat().st_mtime_ns == mtimes[p.name], f"{p.name} was rewritten"
  assert lost.exists()
  assert not list((tmp_path / "out").glob(".*tmp"))


def test_interrupted_run_is_finished_by_running_it_again(tmp_path, monkeypatch):
  write_corpus(tmp_path / "corpus")
  args = dict(input_patterns=f"{tmp_path}/corpus/*", tokenizer_spec="byte",
              docs_per_shard=6)
  write_shard = prepare_lib._write_shard
  calls = []

  def crash_on_third_shard(*a, **k):
    calls.append(a[1])
    if len(calls) == 3:
      raise KeyboardInterrupt
    return write_shard(*a, **k)

  monkeypatch.setattr(prepare_lib, "_write_shard", crash_on_third_shard)
  with pytest.raises(KeyboardInterrupt):
    prepare_lib.prepare(output=str(tmp_path / "out"), **args)
  monkeypatch.setattr(prepare_lib, "_write_shard", write_shard)
  survivors = {name: (tmp_path / "out" / name).stat().st_mtime_ns
               for name in calls[:2]}
  resumed = prepare_lib.prepare(output=str(tmp_path / "out"), **args)
  for name, mtime in survivors.items():
    assert (tmp_path / "out" / name).stat().st_mtime_ns == mtime
  assert resumed == prepare_lib.prepare(output=str(tmp_path / "fresh"), **args)


def test_cli_reports_progress_and_counts_invalid_utf8(tmp_path):
  write_corpus(tmp_path / "corpus")
  (tmp_path / "corpus" / "bad.txt").write_bytes(b"valid \xff\xfe then more")
  (tmp_path / "corpus" / "empty.jsonl").write_text("")
  result = run_prepare(f"--input={tmp_path}/corpus/*", f"--output={tmp_path}/out",
                       "--workers=1")
  assert result.returncode == 0, result.stderr
  assert "tokens/s" in result.stderr and "docs" in result.stderr
  assert "1 document(s) had invalid UTF-8" in result.stderr
  assert "empty.jsonl holds no documents" in result.stderr
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["skipped"]["invalid_utf8_documents"] == 1
  assert manifest["documents"] == 41


@pytest.mark.parametrize("case, message", [
    ("missing", "no files match"),
    ("missing_field", "b.jsonl:2: no field 'text' (fields: body)"),
    ("all_empty", "every input is empty"),
    ("not_json", "c.jsonl:1: not valid JSON"),
    ("binary", "d.txt is not text"),
])
def test_cli_bad_input_is_one_clear_message_and_nonzero_exit(tmp_path, case,
                                                             message):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  if case == "missing_field":
    (corpus / "b.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
  elif case == "all_empty":
    (corpus / "a.txt").write_text("")
    (corpus / "b.jsonl").write_text("\n")
  elif case == "not_json":
    (corpus / "c.jsonl").write_text("{not json\n")
  elif case == "binary":
    (corpus / "d.txt").write_bytes(np.random.default_rng(0).bytes(200_000))
  result = run_prepare(f"--input={corpus}/*", f"--output={tmp_path}/out",
                       "--workers=1")
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_cli_refuses_a_corpus_left_with_no_training_documents(tmp_path):
  (tmp_path / "a.txt").write_text("one document")
  result = run_prepare(f"--input={tmp_path}/a.txt", f"--output={tmp_path}/out",
                       "--workers=1", "--eval_fraction=1")
  assert result.returncode == 2
  assert "smaller --eval_fraction" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_output_made_by_another_tokenizer(tmp_path):
  texts = write_corpus(tmp_path / "corpus")
  out = tmp_path / "out"
  prepare_lib.prepare(input_patterns=f"{tmp_path}/corpus/*", output=str(out),
                      tokenizer_spec="byte")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  spec = tokenizer_spec("sentencepiece", tmp_path, texts)
  result = run_prepare(f"--input={tmp_path}/corpus/*", f"--output={out}",
                       f"--tokenizer={spec}", "--workers=1")
  assert result.returncode != 0
  assert "was prepared with other tokenizer" in result.stderr
  assert "'byte'" in result.stderr
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_refuses_a_foreign_directory(tmp_path):
  write_corpus(tmp_path / "corpus")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("mine")
  result = run_prepare(f"--input={tmp_path}/corpus/*", f"--output={tmp_path}/out")
  assert result.returncode != 0
  assert "was not made by prepare" in result.stderr
  assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_gs_inputs_and_outputs_through_a_local_emulator(tmp_path, monkeypatch):
  emulator = pytest.importorskip("gcp_storage_emulator.server")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = emulator.create_server("127.0.0.1", port, in_memory=True,
                                  default_bucket="bucket")
  server.start()
  try:
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
               FSSPEC_GCS_TOKEN="anon", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    texts = write_corpus(tmp_path / "corpus")
    upload = ("from etils import epath; import sys; "
              "epath.Path(sys.argv[1]).copy(sys.argv[2])")
    subprocess.run([sys.executable, "-c", upload,
                    str(tmp_path / "corpus" / "a.jsonl.gz"),
                    "gs://bucket/corpus/a.jsonl.gz"], env=env, check=True)
    args = ["--input=gs://bucket/corpus/*.jsonl.gz", "--output=gs://bucket/out",
            "--workers=1", "--eval_fraction=0"]
    for verb in ("wrote", "skipped finished"):
      result = subprocess.run(
          [sys.executable, "-m", "drope_jax.data.prepare", *args], cwd=REPO,
          env=env, capture_output=True, text=True, check=False)
      assert result.returncode == 0, result.stderr
      assert f"{verb} train-00000" in result.stderr
    # Training reads the shards from the bucket (through a local cache).
    for key in ("STORAGE_EMULATOR_HOST", "FSSPEC_GCS_TOKEN",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"):
      monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("DROPE_DATA_CACHE", str(tmp_path / "cache"))
    source = sources.ShardSource("gs://bucket/out", "train",
                                 tokenizers.get_tokenizer("byte"))
    assert [bytes(source[i].astype(np.uint8)).decode() for i in range(len(source))
            ] == texts[:20]
    assert len(list((tmp_path / "cache").glob("*.array_record"))) == 1
    # A damaged shard in the bucket is refused by its checksum, not read.
    from etils import epath  # pylint: disable=g-import-not-at-top
    shard = epath.Path("gs://bucket/out/train-00000.array_record")
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    monkeypatch.setenv("DROPE_DATA_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(sources.InputError, match="does not match its manifest"):
      sources.ShardSource("gs://bucket/out", "train", tokenizers.get_tokenizer("byte"))
  finally:
    server.stop()
