"""DroPE recalibration of a pretrained SmolLM-360M, as in the paper.

First import it (drope_jax/hf), then recalibrate without RoPE from its weights:

  python -m drope_jax.hf import --hf=PATH/TO/SmolLM-360M --workdir=runs/smollm-360m
  python -m drope_jax.train --config=configs/smollm_360m_drope.py:runs/smollm-360m \
      --workdir=runs/smollm-360m-drope --config.data.paths=gs://.../fineweb-edu-shards

The variant after `:` is the import's workdir: the weights (checkpoint.init_from) and
the tokenizer come from it. SmolLM-360M: 32 layers, d 960, SwiGLU 2560, 15 heads / 5
KV heads, head_dim 64, theta 1e4, context 2048, vocab 49,152, tied embeddings.
Recipe: NoPE with QK-norm on q, 512 x 2048 tokens per step, AdamW(0.9, 0.95), wd 0.1,
peak lr 1e-3, 490 warmup steps, cosine, 30K steps (about 31B tokens; the paper's
budgets are 30K / 60K / 120K). Shard data.paths with the same tokenizer.
"""

import os

from drope_jax import config as config_lib


def get_config(imported: str = "runs/smollm-360m"):
  config = config_lib.base_config("nope")
  m = config.model
  m.vocab_size, m.d_model, m.n_layers, m.d_ff = 49_152, 960, 32, 2560
  m.n_heads, m.n_kv_heads, m.head_dim = 15, 5, 64
  m.tie_embeddings, m.rope_theta, m.norm_eps = True, 1e4, 1e-5
  m.qk_norm = "q"  # the paper's: lr 1e-3 diverges without it.
  m.param_dtype, m.dtype, m.attention, m.remat = "float32", "bfloat16", "auto", "full"

  config.data.source = "shards"
  config.data.paths = "gs://YOUR_BUCKET/PATH/TO/fineweb-edu-smollm-shards"
  config.data.tokenizer = f"hf:{os.path.join(imported, 'hf', 'tokenizer.json')}"

  t = config.train
  t.steps, t.batch_size, t.seq_len = 30_000, 512, 2048
  t.lr, t.warmup_steps, t.schedule = 1e-3, 490, "cosine"
  t.b1, t.b2, t.weight_decay = 0.9, 0.95, 0.1
  t.eval_every = 1000

  config.checkpoint.init_from = imported
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep_period = 5000
  config.mesh.shape = (1, -1, 1)  # FSDP over every device of a slice.
  return config
