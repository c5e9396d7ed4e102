"""AdamW with clipping, and the learning-rate schedule of a run's phases (plan.py).

The learning rate is a pure function of the global step (`lr_schedule`), injected into
the optimizer state each step. That keeps the schedule exact across restarts and across
the drop point, whether or not the AdamW moments are reset there.
"""

import jax
import optax

from drope_jax import plan as plan_lib

SCHEDULES = ("cosine", "constant", "wsd")


def _phase_schedule(s: plan_lib.Schedule) -> optax.Schedule:
  """Warmup then `s.kind` over `s.steps` steps in total (from the phase's start)."""
  warmup = min(s.warmup, s.steps)
  end = s.peak * s.min_ratio
  if s.kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, s.peak, warmup_steps=warmup, decay_steps=max(s.steps, warmup + 1),
        end_value=end)
  ramp = optax.linear_schedule(0.0, s.peak, max(warmup, 1))
  if s.kind == "constant":
    return optax.join_schedules([ramp, optax.constant_schedule(s.peak)], [warmup])
  if s.kind == "wsd":
    decay = max(int(s.steps * s.decay_fraction), 1)
    stable = max(s.steps - decay - warmup, 0)
    return optax.join_schedules(
        [ramp, optax.constant_schedule(s.peak), optax.linear_schedule(s.peak, end, decay)],
        [warmup, warmup + stable])
  raise ValueError(f"schedule {s.kind!r}: use one of {SCHEDULES}")


def lr_schedule(config) -> optax.Schedule:
  """Global step -> learning rate: each phase's schedule, restarted at its start."""
  phases = plan_lib.make(config).phases
  return optax.join_schedules([_phase_schedule(p.schedule) for p in phases],
                              [p.start for p in phases[1:]])


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
