"""AdamW with clipping, and the learning-rate schedules of both DroPE phases.

The learning rate is a pure function of the global step (`lr_schedule`), injected into
the optimizer state each step. That keeps the schedule exact across restarts and across
the drop point, whether or not the AdamW moments are reset there.
"""

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant", "wsd")


def _phase_schedule(kind: str, *, peak: float, warmup: int, steps: int,
                    min_ratio: float, decay_fraction: float) -> optax.Schedule:
  """Warmup then `kind` over `steps` steps in total (the phase's own step count)."""
  warmup = min(warmup, steps)
  end = peak * min_ratio
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=max(steps, warmup + 1), end_value=end)
  ramp = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if kind == "constant":
    return optax.join_schedules([ramp, optax.constant_schedule(peak)], [warmup])
  if kind == "wsd":
    decay = max(int(steps * decay_fraction), 1)
    stable = max(steps - decay - warmup, 0)
    return optax.join_schedules(
        [ramp, optax.constant_schedule(peak), optax.linear_schedule(peak, end, decay)],
        [warmup, warmup + stable])
  raise ValueError(f"train.schedule={kind!r}: use one of {SCHEDULES}")


def lr_schedule(config) -> optax.Schedule:
  """Global step -> learning rate, with the recalibration schedule after the drop."""
  t = config.train
  pretrain_steps = t.steps
  has_drop = config.model.pos_emb == "drope"
  drop_at = config.drope.drop_at_step
  pretrain = _phase_schedule(t.schedule, peak=t.lr, warmup=t.warmup_steps,
                             steps=pretrain_steps, min_ratio=t.min_lr_ratio,
                             decay_fraction=t.decay_fraction)
  if not has_drop:
    return pretrain
  recalibrate = _phase_schedule(config.drope.schedule, peak=config.drope.lr,
                                warmup=config.drope.warmup_steps,
                                steps=t.steps - drop_at, min_ratio=t.min_lr_ratio,
                                decay_fraction=t.decay_fraction)
  return lambda step: jnp.where(step < drop_at, pretrain(step),
                                recalibrate(jnp.maximum(step - drop_at, 0)))


def _decay_mask(params):
  """Weight decay on matrices only: never on norm gains (parameters named `scale`) or
  biases (named `*_bias_*`)."""
  def decays(path, _):
    names = [str(getattr(k, "key", "")) for k in path]
    return not any(n == "scale" or "_bias_" in n for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW whose learning rate is a hyperparameter set from the global step."""
  t = train_config

  def adamw(learning_rate):
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate, b1=t.b1, b2=t.b2, eps=t.eps,
                    weight_decay=t.weight_decay, mask=_decay_mask))

  return optax.inject_hyperparams(adamw)(learning_rate=0.0)
