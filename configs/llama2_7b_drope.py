"""DroPE recalibration of a pretrained Llama-2-7B, as in the paper.

  python -m drope_jax.hf import --hf=PATH/TO/Llama-2-7b-hf --workdir=runs/llama2-7b \
      --mesh=1,-1,1
  python -m drope_jax.train --config=configs/llama2_7b_drope.py:runs/llama2-7b \
      --workdir=runs/llama2-7b-drope --config.data.paths=gs://.../llama2-shards

The variant after `:` is the import's workdir (weights and tokenizer). Llama-2-7B:
32 layers, d 4096, SwiGLU 11008, 32 heads (MHA), head_dim 128, theta 1e4, context
4096, vocab 32,000, untied. Recipe: NoPE, 512 x 4096 tokens per step, peak lr 1e-4,
100 warmup steps, cosine, 9,500 steps (about 20B tokens, 0.5% of its pretraining).
QK-norm is off: the paper needs it for lr 1e-3; add --config.model.qk_norm=q to try it.
"""

import os

from drope_jax import config as config_lib


def get_config(imported: str = "runs/llama2-7b"):
  config = config_lib.base_config("nope")
  m = config.model
  m.vocab_size, m.d_model, m.n_layers, m.d_ff = 32_000, 4096, 32, 11_008
  m.n_heads, m.n_kv_heads, m.head_dim = 32, 32, 128
  m.tie_embeddings, m.rope_theta, m.norm_eps = False, 1e4, 1e-5
  m.param_dtype, m.dtype, m.attention, m.remat = "float32", "bfloat16", "auto", "full"

  config.data.source = "shards"
  config.data.paths = "gs://YOUR_BUCKET/PATH/TO/llama2-tokenized-shards"
  config.data.tokenizer = f"hf:{os.path.join(imported, 'hf', 'tokenizer.json')}"

  t = config.train
  t.steps, t.batch_size, t.seq_len = 9_500, 512, 4096  # x 512 x 4096 = 19.9B tokens.
  t.lr, t.warmup_steps, t.schedule = 1e-4, 100, "cosine"
  t.eval_every = 500

  config.checkpoint.init_from = imported
  config.checkpoint.every_steps = 500
  config.checkpoint.keep_period = 2000
  config.mesh.shape = (1, -1, 1)  # FSDP over every device of a slice.
  return config
