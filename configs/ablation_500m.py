"""The paper's from-scratch ablation: a Qwen2-0.5B-shaped model, "14B + 2B" tokens.

RoPE for 14K steps, then RoPE is dropped and the model recalibrates for 2K steps with a
fresh schedule (peak lr 1e-3, 70 warmup steps, cosine). 1024 x 1024 tokens per step.

Variants: `rope` (RoPE for all 16K steps), `nope` (NoPE for all 16K steps), `drope`.

Before running, set `data.paths` to your prepared Qwen2-tokenized shards and
`data.tokenizer` to the tokenizer they were prepared with, e.g.
  --config.data.paths=gs://my-bucket/data/fineweb-edu-qwen2
"""

from drope_jax import config as config_lib


def get_config(variant: str = "drope"):
  config = config_lib.base_config(variant)

  # Qwen2-0.5B: 494M parameters (no q/k/v biases here).
  config.model.vocab_size = 151_936
  config.model.d_model = 896
  config.model.n_layers = 24
  config.model.n_heads = 14
  config.model.n_kv_heads = 2
  config.model.head_dim = 64
  config.model.d_ff = 4864
  config.model.tie_embeddings = True
  config.model.rope_theta = 1e6
  config.model.init_std = 0.02
  config.model.param_dtype = "float32"
  config.model.dtype = "bfloat16"
  config.model.attention = "auto"
  config.model.remat = "full"

  # Placeholders: the run cannot start until these name your prepared shard directories
  # and the Qwen2 tokenizer they were prepared with. Shards on gs:// are fetched once
  # into a local cache ($DROPE_DATA_CACHE) on each host.
  config.data.source = "shards"
  config.data.paths = "gs://YOUR_BUCKET/qwen2-tokenized-shards"
  config.data.tokenizer = "hf:gs://YOUR_BUCKET/PATH/TO/qwen2/tokenizer.json"

  config.train.steps = 16_000
  config.train.batch_size = 1024
  config.train.seq_len = 1024
  # 1M tokens per step with a 151,936-token vocab: the logits alone would take ~159 GB
  # per v5p-8 chip; four micro-batches fit (63.7 GiB/chip, `python -m drope_jax.compile`).
  config.train.grad_accum = 4
  config.train.lr = 3e-4
  config.train.warmup_steps = 520
  config.train.schedule = "cosine"
  config.train.b1 = 0.9
  config.train.b2 = 0.95
  config.train.eps = 1e-8
  config.train.weight_decay = 0.1
  config.train.log_every = 10
  config.train.eval_every = 1000

  config.drope.drop_at_step = 14_000
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 70
  config.drope.schedule = "cosine"

  config.checkpoint.every_steps = 1000
  config.checkpoint.keep_period = 2000

  config.mesh.shape = (1, -1, 1)  # FSDP over every device of a slice.
  return config
