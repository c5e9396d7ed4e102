"""PyTorch baseline: Hugging Face LlamaForCausalLM + torch AdamW with a config's shapes.

Same step as drope_jax's: forward, next-token cross-entropy, backward, global-norm clip,
AdamW with the config's hyperparameters; fp32. Used by benchmarks/train_throughput.py.
"""

import torch
import transformers


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


def make_step(config, *, threads: int = 2):
  """One training step (forward, loss, backward, clip, AdamW) as a blocking call."""
  torch.set_num_threads(threads)
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

  return step
