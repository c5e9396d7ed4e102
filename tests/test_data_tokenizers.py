"""Tokenizers: byte-level, SentencePiece, Hugging Face BPE; vocab checks."""

import json
import pathlib
import pickle
import subprocess
import sys

import pytest
import sentencepiece

from drope_jax.data import tokenizers

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "  indented,\twith tabs\n\n\nand blank lines  ",
    "Unicode: café, naïve, Ελληνικά, 日本語, emoji 🙂.",
    "def f(x):\n    return x + 1  # code\n",
]


def test_byte_tokenizer_round_trips_and_has_its_specials():
  tok = tokenizers.get_tokenizer("byte")
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
  for text in TEXTS:
    ids = tok.encode(text)
    assert max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids
  assert tok.decode([104, tok.eos_id, 105, tok.pad_id]) == "hi"


def test_byte_tokenizer_replaces_invalid_utf8_on_decode():
  tok = tokenizers.get_tokenizer("byte")
  assert tok.decode([0xFF, ord("a"), 0xC3]) == "\ufffda\ufffd"


def test_unknown_spec_and_missing_file_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown tokenizer spec 'wordpiece'"):
    tokenizers.get_tokenizer("wordpiece")
  missing = tmp_path / "nope.model"
  with pytest.raises(tokenizers.TokenizerError, match=str(missing)):
    tokenizers.get_tokenizer(f"sentencepiece:{missing}")


def test_check_vocab_names_the_fix():
  tok = tokenizers.get_tokenizer("byte")
  tokenizers.check_vocab(tok, 264)
  tokenizers.check_vocab(tok, 259)
  with pytest.raises(ValueError, match=r"259 ids.*model.vocab_size=256"):
    tokenizers.check_vocab(tok, 256)


def train_sentencepiece(directory: pathlib.Path, texts) -> pathlib.Path:
  """A tiny BPE model whose encode/decode is lossless (identity normalisation)."""
  corpus = directory / "sp_corpus.txt"
  corpus.write_text("\n".join(texts * 20), encoding="utf-8")
  prefix = directory / "sp"
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(prefix), vocab_size=320,
      model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, add_dummy_prefix=False,
      allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
      pad_id=3, minloglevel=2)
  return prefix.with_suffix(".model")


def test_sentencepiece_round_trips_and_pickles(tmp_path):
  model = train_sentencepiece(tmp_path, TEXTS)
  tok = tokenizers.get_tokenizer(f"sentencepiece:{model}")
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (320, 1, 2, 3)
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert tok.identity["kind"] == "sentencepiece"
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.identity == tok.identity
  assert clone.encode(TEXTS[2]) == tok.encode(TEXTS[2])


def test_train_tokenizer_cli_makes_a_lossless_deterministic_bpe(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 30))
  outputs = [tmp_path / "a.json", tmp_path / "new" / "dir" / "b.json"]
  for output in outputs:
    result = subprocess.run(
        [sys.executable, "-m", "drope_jax.data.train_tokenizer",
         f"--input={corpus}", "--vocab_size=300", f"--output={output}",
         "--eval_fraction=0"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
  assert outputs[0].read_bytes() == outputs[1].read_bytes()
  tok = tokenizers.get_tokenizer(f"hf:{outputs[0]}")
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (300, 0, 1, 2)
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert len(tok.encode(TEXTS[0])) < len(TEXTS[0])  # it learned merges.
  assert pickle.loads(pickle.dumps(tok)).identity == tok.identity


def test_train_tokenizer_cli_reports_missing_input(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "drope_jax.data.train_tokenizer",
       f"--input={tmp_path}/none*.jsonl", "--vocab_size=300",
       f"--output={tmp_path}/t.json"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert "no files match" in result.stderr
  assert not (tmp_path / "t.json").exists()
