"""GGUF import: a small random Llama written as a GGUF file reads back as transformers reads it."""

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest

from drope_jax.eval import loading
from drope_jax.hf import common
from drope_jax.hf import convert
from drope_jax.hf import gguf as hf_gguf

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MIXED_TEXT = ("Hello world, the year 2024 has 365 days.\n\n  Ça coûte 3.14€ <|im_start|>user\n"
              "tabs\tand emoji 🙂 <|endoftext|> don't stop")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, and numbers like 365 and 3.14 appear.",
    "Ça coûte cher: 12 euros. Unicode and tabs\tand newlines\n\nare fine.",
    "def f(x):\n    return x * 2  # don't",
] * 20
SHAPES = dict(layers=2, d=64, ffn=128, heads=4, kv_heads=2, head_dim=16)


def _byte_level_bpe():
  """A tiny GPT-2 style BPE: (tokens by id, merges, token types)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=330, special_tokens=list(SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(tok.to_str())["model"]
  tokens = sorted(model["vocab"], key=model["vocab"].get)
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  types = [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
  return tokens, merges, types


def _write_llama_gguf(path, *, tied: bool) -> None:
  """A random 2-layer Llama as llama.cpp would write it, mixing F32, Q8_0 and Q4_1."""
  layers, d, ffn, heads, kv_heads, head_dim = SHAPES.values()
  tokens, merges, types = _byte_level_bpe()
  rng = np.random.default_rng(0)
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(layers)
  w.add_context_length(256)
  w.add_embedding_length(d)
  w.add_feed_forward_length(ffn)
  w.add_head_count(heads)
  w.add_head_count_kv(kv_heads)
  w.add_rope_dimension_count(head_dim)
  w.add_rope_freq_base(10_000.0)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_vocab_size(len(tokens))
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("gpt-2")
  w.add_token_list(tokens)
  w.add_token_merges(merges)
  w.add_token_types(types)
  w.add_bos_token_id(tokens.index("<|im_start|>"))
  w.add_eos_token_id(tokens.index("<|im_end|>"))
  w.add_unk_token_id(tokens.index("<|endoftext|>"))
  w.add_add_bos_token(False)

  def add(name, shape, qtype, scale=0.1):
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
      w.add_tensor(name, x)
    else:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

  f32, q8, q4 = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0,
                 gguf.GGMLQuantizationType.Q4_1)
  add("token_embd.weight", (len(tokens), d), q8, scale=0.3)
  for i in range(layers):
    add(f"blk.{i}.attn_norm.weight", (d,), f32, scale=1.0)
    add(f"blk.{i}.attn_q.weight", (heads * head_dim, d), q4)
    add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, d), q4)
    add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, d), q8)
    add(f"blk.{i}.attn_output.weight", (d, heads * head_dim), q4)
    add(f"blk.{i}.ffn_norm.weight", (d,), f32, scale=1.0)
    add(f"blk.{i}.ffn_gate.weight", (ffn, d), q4)
    add(f"blk.{i}.ffn_up.weight", (ffn, d), q8)
    add(f"blk.{i}.ffn_down.weight", (d, ffn), q4)
  add("output_norm.weight", (d,), f32, scale=1.0)
  if not tied:
    add("output.weight", (len(tokens), d), f32)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def gguf_file(request, tmp_path_factory):
  path = tmp_path_factory.mktemp("gguf") / "model.gguf"
  _write_llama_gguf(path, tied=request.param)
  return path


@pytest.fixture(scope="module")
def transformers_model(gguf_file):
  transformers = pytest.importorskip("transformers")
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf_file.parent), gguf_file=gguf_file.name, dtype="float32")


def test_tensors_equal_transformers_gguf_loading(gguf_file, transformers_model):
  config, tensors, _ = hf_gguf.read_gguf(str(gguf_file))
  reference = {k: v.numpy() for k, v in transformers_model.state_dict().items()}
  tied = config["tie_word_embeddings"]
  assert tied == ("lm_head.weight" not in tensors)
  if tied:
    reference.pop("lm_head.weight")
  assert sorted(tensors) == sorted(reference)
  for name, expected in reference.items():
    assert tensors[name].shape == expected.shape, name
    np.testing.assert_array_equal(tensors[name].load(), expected, err_msg=name)


@pytest.fixture(scope="module")
def imported_run(gguf_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  convert.import_model(*hf_gguf.read_gguf(str(gguf_file)), str(workdir))
  return loading.load_run(str(workdir))


def test_logits_equal_transformers(imported_run, transformers_model):
  import torch  # pylint: disable=g-import-not-at-top
  vocab = transformers_model.config.vocab_size
  tokens_BS = np.random.default_rng(0).integers(0, vocab, (2, 48))
  with torch.no_grad():
    expected = transformers_model(torch.as_tensor(tokens_BS)).logits.numpy()
  ours = imported_run.model()(tokens_BS, positional=imported_run.positional())
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5, rtol=0)


def test_config_matches_transformers(gguf_file, transformers_model):
  config, _, _ = hf_gguf.read_gguf(str(gguf_file))
  reference = transformers_model.config
  for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
              "vocab_size", "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id"):
    assert config[key] == getattr(reference, key), key
  assert config["rope_theta"] == reference.rope_parameters["rope_theta"]


def test_tokenizer_ids_equal_transformers(gguf_file, tmp_path):
  transformers = pytest.importorskip("transformers")
  import tokenizers  # pylint: disable=g-import-not-at-top
  _, _, files = hf_gguf.read_gguf(str(gguf_file))
  ours = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
  reference = transformers.AutoTokenizer.from_pretrained(
      str(gguf_file.parent), gguf_file=gguf_file.name)
  ids = ours.encode(MIXED_TEXT, add_special_tokens=False).ids
  assert ids == reference(MIXED_TEXT, add_special_tokens=False).input_ids
  assert ours.decode(ids, skip_special_tokens=False) == MIXED_TEXT
  # The written files load as a Hugging Face tokenizer with the same ids and special tokens.
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  saved = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert saved(MIXED_TEXT).input_ids == reference(MIXED_TEXT).input_ids
  assert (saved.bos_token, saved.eos_token, saved.unk_token) == (
      reference.bos_token, reference.eos_token, reference.unk_token)


def test_bad_files_name_the_problem(tmp_path):
  not_gguf = tmp_path / "model.gguf"
  not_gguf.write_bytes(b"this is not a gguf file at all")
  with pytest.raises(common.HFError, match="GGUF"):
    hf_gguf.read_gguf(str(not_gguf))
  other = tmp_path / "other.gguf"
  w = gguf.GGUFWriter(str(other), "mamba")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(common.HFError, match="architecture 'mamba'"):
    hf_gguf.read_gguf(str(other))


def test_cli_imports_a_gguf_file(tmp_path):
  path = tmp_path / "model.gguf"
  _write_llama_gguf(path, tied=True)
  workdir = tmp_path / "run"
  done = subprocess.run(
      [sys.executable, "-m", "drope_jax.hf", "import", f"--hf={path}", f"--workdir={workdir}"],
      capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert (workdir / "checkpoints" / "0").is_dir()
  assert json.loads((workdir / "hf" / "config.json").read_text())["_name_or_path"] == str(path)


def test_the_pre_tokenizer_is_the_files():
  """`tokenizer.ggml.pre=smollm` splits digits one by one before BPE, as llama.cpp does."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from drope_jax.hf import gguf_tokenizer  # pylint: disable=g-import-not-at-top
  tokens, merges, types = _byte_level_bpe()
  pieces = {}
  for pre in ("gpt-2", "smollm"):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.pre": pre}
    files = gguf_tokenizer.tokenizer_files(lambda key, default, m=meta: m.get(key, default), 256)
    tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
    pieces[pre] = tok.encode("in 2024", add_special_tokens=False).tokens
  assert pieces["smollm"][-4:] == ["2", "0", "2", "4"]
  assert len(pieces["gpt-2"]) < len(pieces["smollm"])
