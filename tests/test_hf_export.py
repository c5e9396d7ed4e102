"""Export: HF -> import -> export -> HF is bitwise; NoPE exports load with remote code."""

import json
import math

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from drope_jax import checkpoint
from drope_jax import optim
from drope_jax import train_step
from drope_jax.eval import loading
from drope_jax.hf import export
from drope_jax.model import positional as positional_lib
from tests import helpers
from tests import hf_models
from tests.test_hf_import import hf_logits
from tests.test_hf_import import imported

_SAME_KEYS = ("architectures", "model_type", "vocab_size", "hidden_size",
              "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
              "max_position_embeddings", "rope_parameters", "bos_token_id",
              "eos_token_id", "hidden_act")


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "llama3"])
def test_round_trip_is_bitwise_and_loads_in_transformers(name, tmp_path,
                                                         tmp_path_factory):
  model, run, source = imported(name, tmp_path_factory)
  out = tmp_path / "out"
  files = export.export(run.workdir, str(out))
  assert "tokenizer.json" in files and "modeling_drope.py" not in files

  before = safetensors.numpy.load_file(str(source / "model.safetensors"))
  after = safetensors.numpy.load_file(str(out / "model.safetensors"))
  if model.config.tie_word_embeddings:
    before.pop("lm_head.weight", None)
  assert sorted(after) == sorted(before)
  for tensor_name, value in before.items():
    assert after[tensor_name].dtype == value.dtype
    np.testing.assert_array_equal(after[tensor_name], value, err_msg=tensor_name)
  config_before = json.loads((source / "config.json").read_text())
  config_after = json.loads((out / "config.json").read_text())
  for key in _SAME_KEYS:
    assert config_after.get(key) == config_before.get(key), key

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(out), attn_implementation="eager").eval()
  tokens_BS = np.random.default_rng(0).integers(0, hf_models.VOCAB, (1, 24))
  np.testing.assert_array_equal(hf_logits(reloaded, tokens_BS), hf_logits(model, tokens_BS))


def _nope_run(workdir, c: float):
  """A NoPE run with whole-projection QK-norm: random weights, gains far from 1."""
  config = helpers.tiny_config("nope", qk_norm="qk", attention_bias=True,
                               vocab_size=hf_models.VOCAB)
  config.train.seq_len = hf_models.CONTEXT
  mesh = helpers.mesh()
  built, init = train_step.build(config, mesh, optim.make_optimizer(config.train))
  state = init()
  keys = iter(jax.random.split(jax.random.key(1), 1000))

  def perturb(path, x):
    noise = 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)
    is_gain = "scale" in checkpoint.path_key(path)
    return (1 + noise) if is_gain else (x + noise if "_bias_" in str(path) else x * 8)

  state = state.replace(params=jax.tree_util.tree_map_with_path(perturb, state.params))
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), config.checkpoint)
  ckpt.save(0, state, None, dict(step=0, phase="pretrain", tokens_seen=0,
                                 config=config.to_dict()))
  ckpt.wait()
  ckpt.close()
  (workdir / "eval").mkdir()
  (workdir / "eval" / "temperature.json").write_text(json.dumps({"c": c}))


def test_nope_export_with_qk_norm_and_temperature_gives_our_logits(tmp_path):
  c, length = 0.4, 2 * hf_models.CONTEXT
  _nope_run(tmp_path / "run", c)
  files = export.export(str(tmp_path / "run"), str(tmp_path / "out"))
  assert "modeling_drope.py" in files
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "out"), trust_remote_code=True, attn_implementation="eager").eval()
  assert type(hf_model).__name__ == "DropeQwen2ForCausalLM"

  run = loading.load_run(str(tmp_path / "run"))
  beta = 1 + c * math.log(length / hf_models.CONTEXT)
  positional = positional_lib.Positional(kind="nope", temperature=beta)
  tokens_BS = np.random.default_rng(0).integers(0, hf_models.VOCAB, (2, length))
  ours = np.asarray(run.model()(tokens_BS, positional=positional))
  np.testing.assert_allclose(hf_logits(hf_model, tokens_BS), ours, atol=1e-5, rtol=0)
