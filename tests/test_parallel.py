"""Sharding: the same training on any mesh, the rules table, divisibility, remat."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step
from tests import helpers

GOLDEN = pathlib.Path(__file__).parent / "golden"
BATCH, SEQ, STEPS = 8, 32, 5


def _config(**model):
  config = helpers.tiny_config("rope", **model)
  config.train.update(batch_size=BATCH, seq_len=SEQ, lr=1e-2, warmup_steps=1)
  return config


def _batches(config, n=STEPS, seed=0):
  """Fixed batches of two packed documents per row (segment ids exercise masking);
  each row counts up from a random token with a random stride, so loss can fall."""
  rng = np.random.default_rng(seed)
  shape = (BATCH, SEQ)
  half = SEQ // 2
  positions = np.tile(np.concatenate([np.arange(half), np.arange(SEQ - half)]), (BATCH, 1))
  segments = np.tile(np.repeat([1, 2], [half, SEQ - half]), (BATCH, 1))
  out = []
  for _ in range(n):
    start, stride = rng.integers(0, 8, (2, BATCH, 1))
    tokens = (start + stride * np.arange(SEQ + 1)) % config.model.vocab_size
    tokens = tokens.astype(np.int32)
    out.append(dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                    positions=positions.astype(np.int32),
                    segment_ids=segments.astype(np.int32),
                    weights=np.ones(shape, np.float32)))
  return out


def _train(config, mesh_shape):
  """Losses and final params (host numpy) of STEPS steps on a mesh of that shape."""
  mesh = helpers.mesh(mesh_shape)
  tx = optim.make_optimizer(config.train)
  built, init = train_step.build(config, mesh, tx)
  step = train_step.make_train_step(config, built, optim.lr_schedule(config),
                                    plan_lib.make(config).phases[0].positional)
  state = init()
  sharding = parallel.batch_sharding(mesh)
  losses = []
  for batch in _batches(config):
    state, metrics = step(state, jax.device_put(batch, sharding))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))


@pytest.fixture(scope="module")
def single_device_run():
  return _train(_config(), (1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1), (1, 2, 4)],
                         ids=["data-fsdp-tensor", "fsdp", "tensor"])
def test_sharded_training_equals_single_device(single_device_run, mesh_shape):
  # (1, 2, 4) also covers the fallback: 2 kv heads replicated over tensor=4.
  losses, params = _train(_config(), mesh_shape)
  base_losses, base_params = single_device_run
  np.testing.assert_allclose(losses, base_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params, base_params)


def _param_specs(config, mesh_shape) -> dict[str, list]:
  built, _ = train_step.build(config, helpers.mesh(mesh_shape),
                              optim.make_optimizer(config.train))
  flat = jax.tree_util.tree_flatten_with_path(built.state_shardings.params)[0]
  return {jax.tree_util.keystr(path): list(sharding.spec) for path, sharding in flat}


def test_param_shardings_match_the_golden_table():
  specs = _param_specs(_config(), (2, 2, 2))
  golden = json.loads((GOLDEN / "param_specs_tiny_2x2x2.json").read_text())
  # JSON has no tuples: compare specs as nested lists.
  as_lists = {k: [list(e) if isinstance(e, tuple) else e for e in v]
              for k, v in specs.items()}
  assert as_lists == golden


def test_optimizer_moments_are_sharded_like_their_params():
  config = _config()
  built, _ = train_step.build(config, helpers.mesh((2, 2, 2)),
                              optim.make_optimizer(config.train))
  params = built.state_shardings.params
  adam = built.state_shardings.opt_state.inner_state[1][0]
  for moments in (adam.mu, adam.nu):
    assert jax.tree.leaves(moments) == jax.tree.leaves(params)


def test_indivisible_weights_fall_back_to_replication():
  # 2 kv heads on tensor=4 and a vocabulary of 66 on tensor=4: replicated, not a crash.
  specs = _param_specs(_config(vocab_size=66), (1, 2, 4))
  assert specs["['blocks']['attn']['k_EKD'].value"] == [None, "fsdp", None, None]
  assert specs["['blocks']['attn']['q_EHD'].value"] == [None, "fsdp", "tensor", None]
  assert specs["['embed']['table_VE'].value"] == [None, "fsdp"]


def test_activation_constraints_keep_what_divides():
  mesh = helpers.mesh((2, 2, 2))
  assert parallel.logical_to_spec(("batch", "seq", "act_heads"), (8, 16, 3), mesh) == P(
      ("data", "fsdp"), None, None)
  # A batch of 2 keeps 'data' and drops 'fsdp'.
  assert parallel.logical_to_spec(("batch", "seq"), (2, 16), mesh) == P("data", None)


def test_a_batch_that_does_not_split_is_a_clear_config_error():
  config = _config()
  config.train.batch_size = 6
  built, _ = train_step.build(config, helpers.mesh((2, 2, 2)),
                              optim.make_optimizer(config.train))
  with pytest.raises(parallel.MeshError, match=r"batch_size=6 .* a multiple of 4"):
    train_step.make_train_step(config, built, optim.lr_schedule(config),
                               plan_lib.make(config).phases[0].positional)


@pytest.mark.parametrize("shape, dcn, message", [
    ((3, -1, 1), (1, 1, 1), "does not divide the 8 devices"),
    ((2, 2, 1), (1, 1, 1), "uses 4 devices; there are 8"),
    ((-1, 1, -1), (1, 1, 1), "at most one -1"),
    ((1, -1, 1), (2, 1, 1), "needs 2 processes"),
])
def test_mesh_shapes_that_do_not_fit_the_devices_are_clear_errors(shape, dcn, message):
  mesh_config = ml_collections.ConfigDict(dict(shape=shape, dcn_shape=dcn))
  with pytest.raises(parallel.MeshError, match=message):
    parallel.make_mesh(mesh_config)


def _loss_and_grads(remat: str):
  config = _config(remat=remat)
  model = helpers.build_model(config.model)
  batch = _batches(config, n=1)[0]
  rope = plan_lib.make(config).phases[0].positional

  def loss_fn(model):
    logits = model(batch["inputs"], positional=rope, positions_BS=batch["positions"],
                   segment_ids_BS=batch["segment_ids"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, batch["targets"][..., None], -1).mean()

  loss, grads = jax.jit(nnx.value_and_grad(loss_fn))(model)
  return float(loss), jax.tree.map(np.asarray, nnx.to_pure_dict(grads))


def test_remat_policies_give_identical_losses_and_gradients():
  base_loss, base_grads = _loss_and_grads("none")
  for remat in ("full", "save_dots", "save_qkv_proj"):
    loss, grads = _loss_and_grads(remat)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads, base_grads)


def test_save_qkv_proj_keeps_the_named_projections_and_full_keeps_none(capsys):
  def saved_names(remat):
    # Unrolled: a scan would save its body's named values as unnamed loop outputs.
    config = _config(remat=remat, scan_layers=False)
    graphdef, params = nnx.split(helpers.build_model(config.model))
    rope = plan_lib.make(config).phases[0].positional
    tokens = jnp.zeros((1, 8), jnp.int32)
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: nnx.merge(graphdef, p)(tokens, positional=rope).sum(), params)
    return re.findall(r"named '(\w+)'", capsys.readouterr().out)

  layers = _config().model.n_layers
  assert saved_names("full") == []
  assert sorted(saved_names("save_qkv_proj")) == sorted(
      ["key_proj", "query_proj", "value_proj"] * layers)


def test_remat_is_in_the_program():
  config = _config(remat="full")
  model = helpers.build_model(config.model)
  tokens = jnp.zeros((1, 8), jnp.int32)
  rope = plan_lib.make(config).phases[0].positional
  graphdef, params = nnx.split(model)
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda p: nnx.merge(graphdef, p)(tokens, positional=rope).sum()))(params)
  assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)
