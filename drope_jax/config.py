"""Every config key with its default. Experiment configs start here and override.

Variants (the `:variant` after a config path) choose the positional recipe:
`rope`, `nope` or `drope`.
"""

import ml_collections
from ml_collections import config_dict

from drope_jax import errors
from drope_jax import plan
from drope_jax.data import framing
from drope_jax.model import positional


def base_config(variant: str = "drope") -> ml_collections.ConfigDict:
  if variant not in plan.POS_EMB:
    raise ValueError(
        f"unknown config variant {variant!r}: use one of {', '.join(plan.POS_EMB)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  # JAX's persistent compilation cache (local or gs://), so that a restart loads its
  # compiled programs: unset, $JAX_COMPILATION_CACHE_DIR if set, else
  # <workdir>/compilation_cache; none (or empty) turns it off.
  c.compilation_cache_dir = config_dict.placeholder(str)

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
      # The model's own RoPE scaling (Hugging Face `rope_scaling`; evaluation-time
      # baselines are separate): none | linear | dynamic | yarn | llama3.
      rope_scaling="none",
      rope_scaling_factor=1.0,
      rope_original_max_len=0,    # the context the scaling extends (yarn/dynamic/llama3).
      rope_low_freq_factor=1.0,   # llama3.
      rope_high_freq_factor=4.0,  # llama3.
      # none | q | k | qk: RMSNorm on the whole projected q / k (all heads, the paper's);
      # head_qk: RMSNorm of each head of q and k over head_dim, one gain [head_dim] (Qwen3).
      qk_norm="none",
      attention_bias=False,   # biases on the q, k, v projections (Qwen2).
      attention="auto",       # auto | xla | chunked | splash | cudnn.
      attention_chunk=512,    # block size of the `chunked` kernel.
      # splash block sizes: "" = the table in drope_jax/model/splash_blocks.py (by chip
      # and sequence length); "q=1024,kv=1024,kv_compute=512" overrides those named
      # (q, kv, kv_compute, q_dkv, kv_dkv, kv_dkv_compute, q_dq, kv_dq: multiples of 128
      # dividing S).
      splash_block_sizes="",
      # The splash backward computes dq, dk and dv in one kernel, at the cost of
      # S / kv_dkv partial dq copies in HBM; False gives dq a kernel of its own.
      splash_fused_bwd=True,
      remat="none",           # none | full | save_dots | save_qkv_proj (what a layer keeps).
      # Layers under one lax.scan: XLA compiles one layer instead of n_layers (the
      # ablation_500m step on v5p-8: 40 s instead of 285 s). Parameters are stacked
      # [n_layers, ...] either way, so checkpoints do not depend on it.
      scan_layers=True,
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="stdlib",        # stdlib | shards (prepared ArrayRecord directories) | needles.
      paths=config_dict.placeholder(str),     # comma-separated shard dirs for `shards`.
      weights=config_dict.placeholder(str),   # comma-separated mixture weights.
      tokenizer="byte",
      # How a text starts for the model in generate and evaluate (drope_jax/data/framing.py):
      # eos (a native run: documents follow an EOS) | bos | none (`hf import` sets the
      # source tokenizer's).
      framing="eos",
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
      # Synthetic tasks (`recall`, `copy`, `induction` sources; drope_jax/data/tasks):
      # documents of train.seq_len tokens, also scored by `evaluate --evals=<task>`.
      task=ml_collections.ConfigDict(dict(
          pairs=4,            # recall: key-value pairs; induction: repeated segments.
          queries=0,          # recall: queries per document (0: one per pair).
          span=8,             # induction: tokens per repeated segment.
          vocab=64,           # ids of the key range and of the value range.
          filler_vocab=64,    # ids of the filler range.
          copy_fraction=0.5,  # copy: the repeated segment's share of a document.
          loss="answers",     # answers | all: the tokens a task document trains on.
          docs=100_000,       # documents per epoch.
      )),
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=16,          # global sequences per optimizer step.
      seq_len=256,
      grad_accum=1,           # micro-batches per step (batch_size must divide evenly).
      # Cross-entropy over this many positions at a time, so the [batch, seq, vocab]
      # logits never exist at once (0, or a length not dividing seq_len: all at once).
      loss_chunk=256,
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

  c.metrics = ml_collections.ConfigDict(dict(
      wandb=False,            # also log to Weights & Biases (WANDB_MODE=offline: locally).
      wandb_project="drope_jax",
      wandb_entity=config_dict.placeholder(str),  # unset: your default entity.
  ))

  c.profile = ml_collections.ConfigDict(dict(
      steps=config_dict.placeholder(str),  # "20-25": trace steps 20-25 into WORKDIR/profile.
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1, 1),       # (data, fsdp, tensor) per slice; -1 = the rest.
      dcn_shape=(1, 1, 1),    # across slices (multi-slice data parallel over DCN).
  ))
  return c


class ConfigError(errors.BadInput, ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _choices() -> dict[str, tuple[str, ...]]:
  """Each key's allowed values, as the module that owns the choice spells them."""
  # Imported here: the model modules import parallel, which imports this module.
  from drope_jax import optim  # pylint: disable=g-import-not-at-top
  from drope_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from drope_jax.model import kernels  # pylint: disable=g-import-not-at-top
  from drope_jax.model import transformer  # pylint: disable=g-import-not-at-top
  return {
      "model.pos_emb": plan.POS_EMB,
      "model.qk_norm": plan.QK_NORMS,
      "model.rope_scaling": tuple(positional.MODEL_SCALINGS),
      "model.attention": kernels.IMPLS,
      "model.remat": ("none", *transformer.REMAT_POLICIES),
      "model.param_dtype": ("float32", "bfloat16"),
      "model.dtype": ("float32", "bfloat16"),
      "data.packing": pipeline.PACKINGS,
      "data.framing": framing.FRAMINGS,
      "train.schedule": optim.SCHEDULES,
      "train.on_nan": ("stop", "skip"),
      "drope.schedule": optim.SCHEDULES,
      "drope.qk_norm": plan.DROP_QK_NORMS,
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
  from drope_jax.model import splash_blocks  # pylint: disable=g-import-not-at-top
  for key, allowed in _choices().items():
    if _get(config, key) not in allowed:
      raise ConfigError(f"--config.{key}={_get(config, key)!r} is not valid: use one of "
                        f"{', '.join(allowed)}")
  for key in _POSITIVE:
    if _get(config, key) <= 0:
      raise ConfigError(f"--config.{key}={_get(config, key)} must be positive")
  m, t = config.model, config.train
  splash_blocks.parse(m.splash_block_sizes)  # raises ConfigError; S is checked at use.
  if m.n_heads % m.n_kv_heads:
    raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads="
                      f"{m.n_heads} (grouped-query attention)")
  if m.head_dim % 2 and m.pos_emb in ("rope", "drope"):
    raise ConfigError(f"model.head_dim={m.head_dim} must be even with model.pos_emb="
                      f"{m.pos_emb} (RoPE rotates pairs of dimensions); use an even "
                      "head_dim or model.pos_emb=nope")
  if m.rope_scaling != "none" and (m.rope_scaling_factor < 1 or (
      m.rope_scaling != "linear" and m.rope_original_max_len <= 0)):
    raise ConfigError(f"model.rope_scaling={m.rope_scaling} needs model.rope_scaling_factor"
                      " >= 1 and model.rope_original_max_len > 0 (the context it extends)")
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by "
                      f"train.grad_accum={t.grad_accum}")
  if t.loss_chunk < 0:
    raise ConfigError(f"--config.train.loss_chunk={t.loss_chunk} must be >= 0 (0: the "
                      "whole sequence at once)")
  try:
    phases = plan.make(config).phases
  except ValueError as e:  # QK-norms that cannot be combined.
    raise ConfigError(f"drope.qk_norm={config.drope.qk_norm} with model.qk_norm="
                      f"{m.qk_norm}: {e}") from e
  if not all(p.start < p.end for p in phases):
    raise ConfigError(f"drope.drop_at_step={config.drope.drop_at_step} must lie inside "
                      f"the run (0 < drop_at_step < train.steps={t.steps})")
  if config.drope.qk_norm != "none" and len(phases) == 1:
    raise ConfigError(f"drope.qk_norm={config.drope.qk_norm} adds QK-norm at the drop: "
                      f"use it with model.pos_emb=drope (here {m.pos_emb}), or set "
                      "model.qk_norm for the whole run")
  _validate_optimizer(config, phases)
  _check_range("data.eval_fraction", config.data.eval_fraction, 0, 1, high_open=True,
               meaning=": the held-out share of documents")
  _check_range("data.num_workers", config.data.num_workers, 0, None)
  if (config.checkpoint.init_step is not None) and not config.checkpoint.init_from:
    raise ConfigError("checkpoint.init_step needs checkpoint.init_from (the run to start "
                      "from)")


def _check_range(key: str, value, low, high, *, low_open=False, high_open=False,
                 meaning: str = ""):
  below = value <= low if low_open else value < low
  above = high is not None and (value >= high if high_open else value > high)
  if below or above:
    interval = (f"{'(' if low_open else '['}{low}, "
                f"{'inf)' if high is None else f'{high}' + (')' if high_open else ']')}")
    raise ConfigError(f"--config.{key}={value} must lie in {interval}{meaning}")


def _validate_optimizer(config, phases) -> None:
  """Values AdamW and the schedules accept but that cannot train (a negative lr
  ascends the loss; b2 = 1 never forgets; eps = 0 divides by zero)."""
  t = config.train
  for key in ("train.lr", "drope.lr"):
    _check_range(key, _get(config, key), 0, None, meaning=": the peak learning rate")
  for key in ("train.b1", "train.b2"):
    _check_range(key, _get(config, key), 0, 1, high_open=True,
                 meaning=": an AdamW moment decay rate")
  _check_range("train.eps", t.eps, 0, None, low_open=True,
               meaning=": AdamW's denominator guard")
  _check_range("train.weight_decay", t.weight_decay, 0, None)
  _check_range("train.grad_clip", t.grad_clip, 0, None,
               meaning=" (0 turns clipping off)")
  _check_range("train.min_lr_ratio", t.min_lr_ratio, 0, 1,
               meaning=": the final lr as a share of the peak")
  _check_range("train.decay_fraction", t.decay_fraction, 0, 1)
  _check_range("train.eval_batches", t.eval_batches, 0, None)
  # Warmup must end inside its phase, or the lr never reaches its peak.
  has_drop = len(phases) > 1
  pretrain = phases[0].end - phases[0].start
  _check_range("train.warmup_steps", t.warmup_steps, 0, pretrain,
               meaning=f": it must end within the {'pretraining phase' if has_drop else 'run'}"
                       f" ({pretrain} steps)")
  for phase in phases[1:]:
    _check_range("drope.warmup_steps", phase.schedule.warmup, 0, phase.end - phase.start,
                 meaning=f": it must end within the recalibration ({phase.end - phase.start}"
                         " steps from drope.drop_at_step to train.steps)")
