"""The run plan: phases from the config, the schedule across them, the state at the drop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from drope_jax import config as config_lib
from drope_jax import optim
from drope_jax import plan as plan_lib
from drope_jax import train_step
from tests import helpers


def _drope(**drope):
  config = helpers.tiny_config("drope")
  config.train.steps, config.drope.drop_at_step = 20, 12
  config.drope.update(drope)
  return config


def test_rope_and_nope_have_one_phase_drope_two():
  for variant in ("rope", "nope"):
    (phase,) = plan_lib.make(helpers.tiny_config(variant)).phases
    assert (phase.start, phase.end, phase.positional.kind) == (0, 1000, variant)
  plan = plan_lib.make(_drope(qk_norm="k"))
  pretrain, recalibrate = plan.phases
  assert (pretrain.start, pretrain.end, pretrain.positional.kind) == (0, 12, "rope")
  assert (recalibrate.start, recalibrate.end, recalibrate.positional.kind) == (
      12, 20, "nope")
  assert (pretrain.qk_norm, recalibrate.qk_norm) == ("none", "k")
  assert plan.drop_steps == (12,)


def test_the_drop_point_checkpoint_belongs_to_pretraining():
  plan = plan_lib.make(_drope())
  assert [plan.at(s).name for s in (0, 11, 12, 19)] == [
      "pretrain", "pretrain", "recalibrate", "recalibrate"]
  assert [plan.of_checkpoint(s).name for s in (0, 12, 13, 20)] == [
      "pretrain", "pretrain", "recalibrate", "recalibrate"]


@pytest.mark.parametrize("model, drope, merged", [
    ("none", "q", "q"), ("q", "k", "qk"), ("qk", "q", "qk"), ("none", "none", "none")])
def test_drope_qk_norm_adds_to_the_model_qk_norm(model, drope, merged):
  config = _drope(qk_norm=drope)
  config.model.qk_norm = model
  pretrain, recalibrate = plan_lib.make(config).phases
  assert (pretrain.qk_norm, recalibrate.qk_norm) == (model, merged)


def test_qk_norm_at_the_drop_needs_a_drop():
  config = helpers.tiny_config("rope")
  config.drope.qk_norm = "q"
  with pytest.raises(config_lib.ConfigError, match="drope.qk_norm=q .*model.pos_emb=drope"):
    config_lib.validate(config)
  config.drope.qk_norm = "v"
  with pytest.raises(config_lib.ConfigError, match="drope.qk_norm='v' is not valid"):
    config_lib.validate(config)


def test_lr_schedule_restarts_at_the_drop():
  config = _drope(warmup_steps=4, lr=1e-3)
  t = config.train
  t.warmup_steps = 5
  pretrain = optax.warmup_cosine_decay_schedule(
      0.0, t.lr, warmup_steps=t.warmup_steps, decay_steps=t.steps,  # the whole run.
      end_value=t.lr * t.min_lr_ratio)
  recalibrate = optax.warmup_cosine_decay_schedule(
      0.0, 1e-3, warmup_steps=4, decay_steps=8, end_value=1e-3 * t.min_lr_ratio)
  lr = optim.lr_schedule(config)
  expected = [pretrain(s) for s in range(12)] + [recalibrate(s) for s in range(8)]
  np.testing.assert_array_equal([lr(jnp.int32(s)) for s in range(20)], expected)


def _random_state(config, model_config=None):
  built, init = train_step.build(config, helpers.mesh((2, 2, 2)),
                                 optim.make_optimizer(config.train), model_config)
  state = init()
  rng = np.random.default_rng(0)
  leaves, treedef = jax.tree.flatten(state)
  leaves = [jax.device_put(rng.standard_normal(x.shape).astype(x.dtype) + 2, x.sharding)
            for x in leaves]
  return built, jax.tree.unflatten(treedef, leaves)


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("reset_optimizer", [False, True])
def test_carry_over_adds_gains_at_one_and_zero_moments(reset_optimizer):
  config = _drope(qk_norm="q", reset_optimizer=reset_optimizer)
  plan = plan_lib.make(config)
  _, state = _random_state(config, plan.phases[0].model_config(config.model))
  before = _flat(state)
  recalibrate = plan.phases[1]
  built, _ = train_step.build(config, helpers.mesh((2, 2, 2)),
                              optim.make_optimizer(config.train),
                              recalibrate.model_config(config.model))
  after = _flat(train_step.carry_over(built, state, reset_optimizer=reset_optimizer))
  new = sorted(set(after) - set(before))
  assert new and all("q_norm" in k for k in new) and set(before) <= set(after)
  for key, value in after.items():
    if key.startswith(".params") and "q_norm" in key:
      np.testing.assert_array_equal(value, 1.0)
    elif key.startswith(".opt_state") and (reset_optimizer or key in new):
      np.testing.assert_array_equal(value, 0.0)  # moments, count and lr hyperparameter.
    else:
      np.testing.assert_array_equal(value, before[key])
  new_params = [k for k in new if k.startswith(".params")]
  assert len(new) == 3 * len(new_params) == 3  # gain, mu, nu: one stacked array each.
  assert after[new_params[0]].shape[0] == config.model.n_layers
