"""A Llama-2-7B-shaped model at seq 4096, on the paper's 7B recalibration schedule.

Sized for a v5p-128 slice (64 chips, FSDP over all of them): 512 x 4096 tokens per step,
peak lr 1e-4, 100 warmup steps, cosine, about 20B tokens. Used for the TPU compile check.

Variants: `rope` (RoPE throughout), `nope` (NoPE throughout), `drope` (RoPE, dropped at
step 8300 = the 14K/16K proportion of the 0.5B recipe, then recalibration).
The paper's DroPE of a pretrained Llama-2-7B is the `nope` variant started from its
RoPE weights: set `checkpoint.init_from` to a run directory holding them (a fresh
optimizer and schedule, as in the paper). Set `data.paths` and `data.tokenizer` to your
prepared shards and the Llama-2 tokenizer.
"""

from drope_jax import config as config_lib


def get_config(variant: str = "drope"):
  config = config_lib.base_config(variant)

  config.model.vocab_size = 32_000
  config.model.d_model = 4096
  config.model.n_layers = 32
  config.model.n_heads = 32
  config.model.n_kv_heads = 32
  config.model.head_dim = 128
  config.model.d_ff = 11_008
  config.model.tie_embeddings = False
  config.model.rope_theta = 1e4
  config.model.norm_eps = 1e-5
  config.model.init_std = 0.02
  config.model.param_dtype = "float32"
  config.model.dtype = "bfloat16"
  config.model.attention = "auto"
  config.model.remat = "full"

  # Placeholders: the run cannot start until these name your prepared shard directories
  # and the Llama-2 tokenizer they were prepared with.
  config.data.source = "shards"
  config.data.paths = "gs://YOUR_BUCKET/PATH/TO/llama2-tokenized-shards"
  config.data.tokenizer = "sentencepiece:gs://YOUR_BUCKET/PATH/TO/llama2/tokenizer.model"

  config.train.steps = 9_500  # x 512 x 4096 = 19.9B tokens.
  config.train.batch_size = 512
  config.train.seq_len = 4096
  config.train.lr = 1e-4
  config.train.warmup_steps = 100
  config.train.schedule = "cosine"
  config.train.log_every = 10
  config.train.eval_every = 500

  config.drope.drop_at_step = 8_300
  config.drope.lr = 1e-4
  config.drope.warmup_steps = 100
  config.drope.schedule = "cosine"

  config.checkpoint.every_steps = 500
  config.checkpoint.keep_period = 2000

  config.mesh.shape = (1, -1, 1)  # FSDP over every device of a slice.
  return config
