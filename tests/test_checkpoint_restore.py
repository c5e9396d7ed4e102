"""Checkpointer in process: other meshes, unfinished and corrupt checkpoints, partial
restores for init_from."""

import shutil

import jax
import numpy as np
import pytest
from absl import logging

from drope_jax import checkpoint
from drope_jax import optim
from drope_jax import train_step
from drope_jax import resume
from tests import helpers


def _built(config, mesh_shape):
  return train_step.build(config, helpers.mesh(mesh_shape),
                          optim.make_optimizer(config.train))


def _random_state(built, init_fn, seed=0):
  """The init state with every float leaf replaced by random bit patterns: distinct,
  and incompressible, so that orbax stores their bytes as they are."""
  state = init_fn()
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(seed)
  leaves = [jax.device_put(rng.integers(0, 2**32, x.shape, np.uint32).view(np.float32)
                           if x.dtype == np.float32 else np.asarray(x), x.sharding)
            for x in leaves]
  return jax.tree.unflatten(treedef, leaves)


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               a, b)


# What the Checkpointer adds to the metadata of a state saved without a data iterator.
_ADDED_META = {checkpoint.LAYOUT: checkpoint.STACKED, checkpoint.FRESH_OPTIMIZER: False,
               checkpoint.DATA_ITER_SAVED: False}


def _checkpointer(directory, keep_steps=(), **overrides):
  config = helpers.tiny_config().checkpoint
  config.update(overrides)
  return checkpoint.Checkpointer(str(directory), config, keep_steps=keep_steps)


def test_saved_on_8_devices_restores_on_4_and_on_1_with_the_same_values(tmp_path):
  config = helpers.tiny_config()
  built8, init8 = _built(config, (2, 2, 2))
  state = _random_state(built8, init8)
  ckpt = _checkpointer(tmp_path)
  ckpt.save(5, state, None, {"step": 5})
  ckpt.close()
  for shape in [(1, 2, 2), (1, 1, 1)]:
    built, _ = _built(config, shape)
    step, restored, meta = _checkpointer(tmp_path).restore_latest(built.abstract_state)
    assert step == 5 and meta == {"step": 5, **_ADDED_META}
    _assert_equal(restored, state)
    n = shape[0] * shape[1] * shape[2]
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(restored)} <= {1, n}
    assert len(restored.params["embed"]["table_VE"].sharding.device_set) == n


def test_kept_are_the_last_n_every_kth_and_the_drop_point(tmp_path):
  _, init = _built(helpers.tiny_config(), (1, 1, 1))
  state = init()
  ckpt = _checkpointer(tmp_path, keep_steps=(7,), max_to_keep=2, keep_period=4)
  for step in range(1, 11):
    ckpt.save(step, state, None, {})
  ckpt.wait()
  assert ckpt.steps() == [4, 7, 8, 9, 10]


@pytest.fixture(scope="module")
def _saved(tmp_path_factory):
  directory = tmp_path_factory.mktemp("saved")
  built, init = _built(helpers.tiny_config(), (1, 1, 1))
  ckpt = _checkpointer(directory)
  states = {}
  for step in (1, 2, 3):
    states[step] = _random_state(built, init, seed=step)
    ckpt.save(step, states[step], None, {"step": step})
  ckpt.close()
  return directory, built, states


@pytest.fixture
def three_checkpoints(_saved, tmp_path):  # pylint: disable=redefined-outer-name
  """Steps 1, 2, 3 of a tiny state, each with its own values: a copy to damage."""
  directory, built, states = _saved
  shutil.copytree(directory, tmp_path / "checkpoints")
  return tmp_path / "checkpoints", built, states


def test_an_unfinished_save_is_never_chosen(three_checkpoints):
  directory, built, states = three_checkpoints
  # What a process killed while writing step 4 leaves: orbax's temporary directory.
  (directory / "3").rename(directory / "4.orbax-checkpoint-tmp")
  ckpt = _checkpointer(directory)
  assert ckpt.steps() == [1, 2]
  step, restored, _ = ckpt.restore_latest(built.abstract_state)
  assert step == 2
  _assert_equal(restored, states[2])


def test_a_corrupt_latest_checkpoint_is_skipped_with_a_warning_and_moved_aside(
    three_checkpoints, monkeypatch):
  directory, built, states = three_checkpoints
  for f in (directory / "3" / "state" / "d").iterdir():
    f.write_bytes(b"not a checkpoint")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  ckpt = _checkpointer(directory)
  step, restored, meta = ckpt.restore_latest(built.abstract_state)
  assert step == 2 and meta == {"step": 2, **_ADDED_META}
  _assert_equal(restored, states[2])
  assert len(warnings) == 1 and "/3 is unreadable" in warnings[0], warnings
  assert "moved it to 3.corrupt; resuming from step 2" in warnings[0], warnings
  assert (directory / "3.corrupt" / "state").is_dir()
  assert ckpt.steps() == [1, 2]
  # The run goes on and saves step 3 again.
  ckpt.save(3, states[3], None, {"step": 3})
  ckpt.wait()
  assert ckpt.restore_latest(built.abstract_state)[0] == 3


def test_when_no_checkpoint_restores_nothing_is_moved(three_checkpoints):
  directory, _, _ = three_checkpoints
  other, _ = _built(helpers.tiny_config(d_model=48), (1, 1, 1))  # not what was saved.
  with pytest.raises(checkpoint.RestoreError, match="nothing was moved"):
    _checkpointer(directory).restore_latest(other.abstract_state)
  assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]


def test_params_restore_into_a_model_with_new_qk_norm_gains(three_checkpoints):
  directory, _, states = three_checkpoints
  built, _ = _built(helpers.tiny_config(qk_norm="q"), (1, 1, 1))
  restored = _checkpointer(directory).restore_parts(2, built.abstract_state, ["params"])
  saved = {checkpoint.path_key(p): x for p, x in
           jax.tree_util.tree_flatten_with_path(states[2].params)[0]}
  assert {k[1:] for k in restored} == set(saved)
  for key, value in restored.items():
    np.testing.assert_array_equal(value, saved[key[1:]])
  assert not any("q_norm" in k for k in restored)


def test_a_saved_array_that_does_not_fit_is_named(three_checkpoints):
  directory, _, _ = three_checkpoints
  built, _ = _built(helpers.tiny_config(d_ff=48), (1, 1, 1))
  with pytest.raises(ValueError, match=r"params/blocks/mlp/down_FE/value \(2, 64, 32\)"):
    _checkpointer(directory).restore_parts(2, built.abstract_state, ["params"])


@pytest.mark.parametrize("saved, here, ok", [
    ("none", "q", True), ("q", "qk", True), ("none", "none", True),
    ("q", "none", False), ("k", "q", False)])
def test_init_from_may_only_add_qk_norm_gains(saved, here, ok):
  saved_model = dict(helpers.tiny_config(qk_norm=saved).model)
  diffs = resume.architecture_mismatch(saved_model, helpers.tiny_config(qk_norm=here).model,
                                        new_qk_norm_ok=True)
  assert (not diffs) == ok
  assert resume.architecture_mismatch(
      saved_model, helpers.tiny_config(qk_norm=saved, d_model=48).model,
      new_qk_norm_ok=True) == ["model.d_model is 32 there and 48 here"]



def _overwrite_a_block(checkpoint_dir, state):
  """What a failing disk or a bad copy does: 4 KiB of an array's stored bytes replaced;
  every file still decodes, and orbax alone restores it without complaint."""
  table = np.asarray(state.params["embed"]["table_VE"][...]).tobytes()
  for f in (checkpoint_dir / "state").rglob("*"):
    data = bytearray(f.read_bytes()) if f.is_file() else b""
    if table[:64] in data:
      at = data.index(table[:64])
      data[at:at + 4096] = np.random.default_rng(0).bytes(4096)
      f.write_bytes(bytes(data))
      return
  raise AssertionError(f"the embedding's bytes are in no file of {checkpoint_dir}")


def test_random_bytes_in_a_data_file_are_caught_and_the_previous_checkpoint_used(
    three_checkpoints, monkeypatch):
  directory, built, states = three_checkpoints
  _overwrite_a_block(directory / "3", states[3])
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  step, restored, _ = _checkpointer(directory).restore_latest(built.abstract_state)
  assert step == 2
  _assert_equal(restored, states[2])
  assert any("/3 is unreadable (CorruptCheckpointError" in w
             for w in warnings), warnings
  assert (directory / "3.corrupt").is_dir()


def test_init_from_a_corrupt_checkpoint_is_refused(three_checkpoints):
  directory, built, states = three_checkpoints
  _overwrite_a_block(directory / "2", states[2])
  with pytest.raises(checkpoint.CorruptCheckpointError, match="files are corrupt"):
    _checkpointer(directory).restore_parts(2, built.abstract_state, ["params"])


def test_a_checkpoint_of_per_layer_parameters_is_refused_with_the_fix(tmp_path):
  """Checkpoints from before the stacked layout (blocks/0, blocks/1, ...) are named as
  such, not tried as corrupt nor moved aside."""
  built, init = _built(helpers.tiny_config(), (1, 1, 1))
  ckpt = _checkpointer(tmp_path)
  meta = {"step": 1, checkpoint.FINGERPRINTS: {}}  # what older versions wrote.
  ckpt.manager.save(1, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardSave(init()),
      meta=checkpoint.ocp.args.JsonSave(meta)), force=True)
  ckpt.close()
  with pytest.raises(checkpoint.LayoutError, match="before layers were stacked"):
    _checkpointer(tmp_path).restore_latest(built.abstract_state)
  with pytest.raises(checkpoint.LayoutError, match="start a new --workdir"):
    _checkpointer(tmp_path).restore_parts(1, built.abstract_state, ["params"])
  assert _checkpointer(tmp_path).steps() == [1]


def test_a_scanned_runs_checkpoint_restores_into_an_unrolled_model_and_back(tmp_path):
  """scan_layers changes the loop, not the layout: the same checkpoint serves both."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from drope_jax.model.positional import Positional  # pylint: disable=g-import-not-at-top
  configs = {scan: helpers.tiny_config(scan_layers=scan) for scan in (True, False)}
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  logits = {}
  for written, read in ((True, False), (False, True)):
    built, init = _built(configs[written], (1, 1, 1))
    state = init()
    ckpt = _checkpointer(tmp_path / f"written_scanned_{written}")
    ckpt.save(1, state, None, {})
    ckpt.close()
    target, _ = _built(configs[read], (1, 1, 1))
    _, restored, _ = _checkpointer(
        tmp_path / f"written_scanned_{written}").restore_latest(target.abstract_state)
    _assert_equal(restored, state)
    for graphdef, params in ((built.graphdef, state.params),
                             (target.graphdef, restored.params)):
      model = nnx.merge(graphdef, params)
      logits[graphdef is built.graphdef] = model(tokens, positional=Positional("rope"))
    assert np.isfinite(logits[True]).all()
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, jax.numpy.bfloat16, np.int32, np.bool_])
def test_fingerprints_summed_a_slice_at_a_time_equal_the_one_pass_sum(monkeypatch, dtype):
  """On CPU a fingerprint is summed in slices (no array-sized temporary); the value is
  the definition's: sum of bit patterns times (2i + 1) mod 2**32, any slice size."""
  rng = np.random.default_rng(0)
  values = rng.integers(0, 2**16, (5, 7, 3)).astype(dtype)  # 105: no multiple of 8.
  bits = np.asarray(values).reshape(-1)
  bits = bits.astype(np.uint32) if dtype == np.bool_ else bits.view(
      f"uint{bits.itemsize * 8}").astype(np.uint32)
  index = np.arange(bits.size, dtype=np.uint64)
  expected = int((bits.astype(np.uint64) * (2 * index + 1)).sum() % 2**32)
  monkeypatch.setattr(checkpoint, "FINGERPRINT_SLICE", 8)
  jax.clear_caches()  # _fingerprint_all reads the slice size when it is traced.
  [(_, got)] = checkpoint.fingerprints({"x": jax.numpy.asarray(values)}).values()
  assert got == expected
