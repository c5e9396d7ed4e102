"""Every config key with its default. Experiment configs start here and override.

Variants (the `:variant` after a config path) choose the positional recipe:
`rope`, `nope` or `drope`.
"""

import ml_collections
from ml_collections import config_dict

from drope_jax import plan


def base_config(variant: str = "drope") -> ml_collections.ConfigDict:
  if variant not in plan.POS_EMB:
    raise ValueError(
        f"unknown config variant {variant!r}: use one of {', '.join(plan.POS_EMB)}")
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      vocab_size=264,
      d_model=256,
      n_layers=4,
      n_heads=4,
      n_kv_heads=2,          # 1 (MQA) .. n_heads (MHA); must divide n_heads.
      head_dim=64,
      d_ff=640,              # SwiGLU hidden width.
      tie_embeddings=True,
      init_std=0.02,
      norm_eps=1e-6,
      param_dtype="float32",  # master weights.
      dtype="float32",        # compute dtype: float32 | bfloat16.
      pos_emb=variant,        # rope | nope | drope (RoPE until drope.drop_at_step).
      rope_theta=10_000.0,
      qk_norm="none",         # none | q | k | qk: RMSNorm on the whole projected q / k.
      attention="auto",       # auto | xla | chunked | splash | cudnn.
      attention_chunk=512,    # block size of the `chunked` kernel.
      remat="none",           # none | full | save_dots.
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="stdlib",        # stdlib | shards (prepared ArrayRecord directories) | needles.
      paths=config_dict.placeholder(str),     # comma-separated shard dirs for `shards`.
      weights=config_dict.placeholder(str),   # comma-separated mixture weights.
      tokenizer="byte",
      packing="concat",       # concat (concatenate-and-split) | first_fit (document-aware).
      document_mask=False,    # segment ids + per-document positions (attention stays in-doc).
      num_workers=0,          # grain worker processes for prefetch.
      eval_fraction=0.05,     # held-out share of documents for the eval split.
      packing_bins=8,         # first_fit: bins each batch row packs into at once.
      # `needles` source: RULER-style key-value needles in real haystack text.
      needle_haystack="stdlib",  # stdlib | glob of .txt/.jsonl(.gz)/.parquet files.
      text_field="text",      # JSON field / Parquet column of needle_haystack files.
      needle_docs=100_000,    # documents per epoch (eval: this * eval_fraction).
      needle_max_tokens=config_dict.placeholder(int),  # unset: the sequence length.
      needle_min_tokens=config_dict.placeholder(int),  # unset: half of max (or what fits).
      needle_variants="single,multikey,multiquery,multivalue",  # RULER's, as evaluated.
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=16,          # global sequences per optimizer step.
      seq_len=256,
      grad_accum=1,           # micro-batches per step (batch_size must divide evenly).
      lr=3e-4,
      warmup_steps=100,
      schedule="cosine",      # cosine | constant | wsd (warmup-stable-decay).
      decay_fraction=0.2,     # wsd: share of steps spent decaying.
      min_lr_ratio=0.1,       # final lr / peak lr.
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      grad_clip=1.0,
      log_every=10,
      eval_every=200,
      eval_batches=4,
      on_nan="stop",          # stop | skip: what a non-finite loss does.
  ))

  c.drope = ml_collections.ConfigDict(dict(
      drop_at_step=800,       # first step trained without RoPE (pos_emb=drope only).
      lr=1e-3,                # recalibration peak lr.
      warmup_steps=70,
      schedule="cosine",
      reset_optimizer=True,   # fresh AdamW moments at the drop.
      qk_norm="none",         # none | q | k | qk: QK-norm gains (init 1) added at the drop.
  ))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=200,
      max_to_keep=3,
      keep_period=config_dict.placeholder(int),  # also keep every K-th step forever.
      async_save=True,
      init_from=config_dict.placeholder(str),    # another run's checkpoint dir (or workdir).
      init_step=config_dict.placeholder(int),    # its step; latest if unset.
      init_optimizer=False,                       # also take its optimizer state.
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1, 1),       # (data, fsdp, tensor) per slice; -1 = the rest.
      dcn_shape=(1, 1, 1),    # across slices (multi-slice data parallel over DCN).
  ))
  return c


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _choices() -> dict[str, tuple[str, ...]]:
  """Each key's allowed values, as the module that owns the choice spells them."""
  # Imported here: the model modules import parallel, which imports this module.
  from drope_jax import optim  # pylint: disable=g-import-not-at-top
  from drope_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from drope_jax.model import kernels  # pylint: disable=g-import-not-at-top
  return {
      "model.pos_emb": plan.POS_EMB,
      "model.qk_norm": plan.QK_NORMS,
      "model.attention": kernels.IMPLS,
      "model.remat": ("none", "full", "save_dots"),
      "model.param_dtype": ("float32", "bfloat16"),
      "model.dtype": ("float32", "bfloat16"),
      "data.packing": pipeline.PACKINGS,
      "train.schedule": optim.SCHEDULES,
      "train.on_nan": ("stop", "skip"),
      "drope.schedule": optim.SCHEDULES,
      "drope.qk_norm": plan.QK_NORMS,
  }

_POSITIVE = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads",
             "model.n_kv_heads", "model.head_dim", "model.d_ff", "model.attention_chunk",
             "train.steps", "train.batch_size", "train.seq_len", "train.grad_accum",
             "train.log_every", "train.eval_every", "checkpoint.every_steps",
             "checkpoint.max_to_keep")


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def validate(config) -> None:
  """Raises ConfigError for values that type checks cannot catch."""
  for key, allowed in _choices().items():
    if _get(config, key) not in allowed:
      raise ConfigError(f"--config.{key}={_get(config, key)!r} is not valid: use one of "
                        f"{', '.join(allowed)}")
  for key in _POSITIVE:
    if _get(config, key) <= 0:
      raise ConfigError(f"--config.{key}={_get(config, key)} must be positive")
  m, t = config.model, config.train
  if m.n_heads % m.n_kv_heads:
    raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads="
                      f"{m.n_heads} (grouped-query attention)")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even (RoPE rotates pairs)")
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by "
                      f"train.grad_accum={t.grad_accum}")
  if t.warmup_steps < 0 or config.drope.warmup_steps < 0:
    raise ConfigError("warmup steps must be >= 0")
  phases = plan.make(config).phases
  if not all(p.start < p.end for p in phases):
    raise ConfigError(f"drope.drop_at_step={config.drope.drop_at_step} must lie inside "
                      f"the run (0 < drop_at_step < train.steps={t.steps})")
  if config.drope.qk_norm != "none" and len(phases) == 1:
    raise ConfigError(f"drope.qk_norm={config.drope.qk_norm} adds QK-norm at the drop: "
                      f"use it with model.pos_emb=drope (here {m.pos_emb}), or set "
                      "model.qk_norm for the whole run")
  if (config.checkpoint.init_step is not None) and not config.checkpoint.init_from:
    raise ConfigError("checkpoint.init_step needs checkpoint.init_from (the run to start "
                      "from)")
