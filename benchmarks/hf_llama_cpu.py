r"""PyTorch baseline: Hugging Face LlamaForCausalLM + torch AdamW training on CPU.

Builds the Llama model with the shapes of a drope_jax config, trains on random tokens at
the config's batch x seq, and prints tokens/s beside the row drope_jax fills in:

  python -m benchmarks.hf_llama_cpu --config=configs/tiny.py [--threads=2 --steps=20]

Same step as drope_jax's: forward, next-token cross-entropy, backward, global-norm clip,
AdamW with the config's hyperparameters; fp32 (the config's compute dtype is ignored).
"""

import time

from absl import app
from absl import flags
from ml_collections import config_flags
import torch
import transformers

from drope_jax import flops

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "drope_jax config.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps first.")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps.")


def hf_llama(model_config) -> transformers.LlamaForCausalLM:
  m = model_config
  hf_config = transformers.LlamaConfig(
      vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff,
      num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
      num_key_value_heads=m.n_kv_heads, head_dim=m.head_dim,
      tie_word_embeddings=m.tie_embeddings, rope_theta=m.rope_theta,
      rms_norm_eps=m.norm_eps, initializer_range=m.init_std,
      attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
  return transformers.LlamaForCausalLM(hf_config)


def main(argv):
  del argv
  config = _CONFIG.value
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(config.seed)
  model = hf_llama(config.model).train()
  t = config.train
  optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.b1, t.b2), eps=t.eps,
                                weight_decay=t.weight_decay)
  tokens = torch.randint(0, config.model.vocab_size, (t.batch_size, t.seq_len))

  def step():
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  for _ in range(_WARMUP.value):
    step()
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    step()
  seconds = (time.perf_counter() - start) / _STEPS.value

  n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once.
  tokens_per_sec = t.batch_size * t.seq_len / seconds
  gflops = tokens_per_sec * flops.training_flops_per_token(config.model, t.seq_len) / 1e9
  print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{_THREADS.value} threads, {_STEPS.value} timed steps after {_WARMUP.value}; "
        f"params {n_params:,} (drope_jax count {flops.params_count(config.model)['total']:,})")
  print("| trainer | shape | batch x seq | step s | tokens/s | model GFLOP/s |")
  print("|---|---|---|---|---|---|")
  shape = f"{config.model.n_layers}L d{config.model.d_model} {n_params / 1e6:.1f}M"
  print(f"| HF LlamaForCausalLM + torch AdamW (CPU) | {shape} | {t.batch_size} x {t.seq_len} "
        f"| {seconds:.3f} | {tokens_per_sec:,.0f} | {gflops:.1f} |")
  print(f"| drope_jax | {shape} | {t.batch_size} x {t.seq_len} | | | |")


if __name__ == "__main__":
  app.run(main)
