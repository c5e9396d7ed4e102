"""Parameter counts against hand arithmetic, Hugging Face and our model; FLOPs; peaks."""

import importlib.util
import pathlib

from flax import nnx
import jax
import pytest

from drope_jax import config as config_lib
from drope_jax import flops
from drope_jax import parallel
from drope_jax.model import transformer


def _model_config(**overrides):
  model = config_lib.base_config().model
  model.update(overrides)
  return model


def _qwen2_05b(**overrides):
  shape = dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
               head_dim=64, d_ff=4864, tie_embeddings=True)
  return _model_config(**{**shape, **overrides})


def test_qwen2_05b_param_count():
  embedding = 151936 * 896                       # 136_134_656
  attention = 896 * (14 * 64) * 2 + 896 * (2 * 64) * 2  # wq, wo, wk, wv
  mlp = 3 * 896 * 4864
  per_layer = attention + mlp + 2 * 896          # + attention and MLP RMSNorms
  non_embedding = 24 * per_layer + 896           # + final RMSNorm
  counts = flops.params_count(_qwen2_05b())
  assert counts == dict(embedding=embedding, non_embedding=non_embedding,
                        total=embedding + non_embedding)
  # Qwen2-0.5B's published 494,032,768 has q/k/v biases (24 x (896 + 128 + 128)): we have none.
  assert counts["total"] == 494_032_768 - 24 * (896 + 2 * 128)


@pytest.mark.parametrize("qk_norm, extra", [
    ("none", 0), ("q", 14 * 64), ("k", 2 * 64), ("qk", 14 * 64 + 2 * 64)])
def test_qk_norm_gains_are_counted_per_layer(qk_norm, extra):
  base = flops.params_count(_qwen2_05b())["total"]
  assert flops.params_count(_qwen2_05b(qk_norm=qk_norm))["total"] == base + 24 * extra


def test_unknown_qk_norm_is_an_error():
  with pytest.raises(ValueError, match="qk_norm"):
    flops.params_count(_model_config(qk_norm="both"))


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_transformers_llama(tie):
  transformers = pytest.importorskip("transformers")
  model = _model_config(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, d_ff=160, tie_embeddings=tie)
  hf_config = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=16, intermediate_size=160,
      tie_word_embeddings=tie, attention_bias=False, mlp_bias=False)
  hf_model = transformers.LlamaForCausalLM(hf_config)
  hf_total = sum(p.numel() for p in hf_model.parameters())  # tied weights listed once.
  assert flops.params_count(model)["total"] == hf_total


def test_training_flops_per_token_hand_computed():
  model = _model_config(vocab_size=264, d_model=256, n_layers=4, n_heads=4,
                        n_kv_heads=2, head_dim=64, d_ff=640)
  layer_matmuls = 256 * (2 * 256 + 2 * 128) + 3 * 256 * 640   # 688_128
  matmul_params = 4 * layer_matmuls + 256 * 264               # + logits: 2_820_096
  attention = 12 * 4 * 256 * 4 * 64 // 2                       # causal: 1_572_864
  expected = 6 * matmul_params + attention
  assert expected == 18_493_440
  assert flops.training_flops_per_token(model, seq_len=256) == expected


def test_logits_matmul_counted_once_tied_or_not():
  tied = flops.training_flops_per_token(_qwen2_05b(), 1024)
  untied = flops.training_flops_per_token(_qwen2_05b(tie_embeddings=False), 1024)
  assert tied == untied


@pytest.mark.parametrize("kind, chip", [
    ("TPU v4", "tpu_v4"),
    ("TPU v5 lite", "tpu_v5e"),
    ("TPU v5e", "tpu_v5e"),
    ("TPU v5", "tpu_v5p"),
    ("TPU v5p", "tpu_v5p"),
    ("TPU v6 lite", "tpu_v6e"),
    ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"),
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H200", "h200"),
    ("cpu", "cpu"),
    ("NVIDIA H100 PCIe", None),
    ("TPU v4 lite", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_chip_name_from_device_kind(kind, chip):
  assert flops.chip_name(kind) == chip


def test_peak_flops_per_device():
  assert flops.peak_flops_per_device("TPU v5p") == 459e12
  assert flops.peak_flops_per_device("TPU v6 lite", "bfloat16") == 918e12
  assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3", "float32") == 494.7e12
  assert flops.peak_flops_per_device("cpu", "float32") == 180e9
  assert flops.peak_flops_per_device("cpu", "bfloat16") is None
  assert flops.peak_flops_per_device("Some future chip") is None
  assert flops.peak_flops_per_device(dtype="float32") == 180e9  # the local CPU device.


def test_mfu():
  assert flops.mfu(1000.0, 6e9, 12e12) == pytest.approx(0.5)
  assert flops.mfu(1000.0, 6e9, None) is None


def _load_config(name, variant):
  path = pathlib.Path(__file__).parent.parent / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("variant", ["rope", "nope", "drope"])
def test_experiment_configs_have_the_published_sizes(variant):
  qwen2 = _load_config("ablation_500m", variant)
  llama2 = _load_config("llama_7b", variant)
  config_lib.validate(qwen2)
  config_lib.validate(llama2)
  assert qwen2.model.pos_emb == variant
  assert flops.params_count(qwen2.model) == flops.params_count(_qwen2_05b())
  assert flops.params_count(llama2.model)["total"] == 6_738_415_616  # Llama-2-7B.


@pytest.mark.parametrize("qk_norm", ["none", "qk"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_drope_jax_model(qk_norm, tie):
  config = config_lib.base_config()
  config.model.update(qk_norm=qk_norm, tie_embeddings=tie)
  cfg = transformer.ModelConfig.from_config(config.model)
  with parallel.mesh_context(parallel.make_mesh(config.mesh)):
    model = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
  n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert flops.params_count(config.model)["total"] == n_params
