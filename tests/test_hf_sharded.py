"""Importing onto an fsdp x tensor mesh of 8 devices gives what importing on 1 gives."""

import jax
import numpy as np

from drope_jax import checkpoint
from drope_jax.eval import loading
from tests import hf_models
from tests.test_hf_import import import_dir


def _leaves(params):
  return {checkpoint.path_key(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_import_on_8_devices_equals_import_on_1(tmp_path):
  hf_models.save("qwen2", str(tmp_path / "source"))
  import_dir(tmp_path / "source", tmp_path / "one", devices=jax.devices()[:1])
  import_dir(tmp_path / "source", tmp_path / "eight", mesh_shape=(1, 4, 2))

  eight = loading.load_run(str(tmp_path / "eight"))
  assert dict(eight.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  q = _leaves(eight.params)[("blocks", "attn", "q_EHD", "value")]
  assert tuple(q.sharding.spec)[:3] == (None, "fsdp", "tensor")  # [layers, E, H, D]
  one = _leaves(loading.load_run(str(tmp_path / "one"), devices=jax.devices()[:1]).params)
  for key, value in _leaves(eight.params).items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(one[key]),
                                  err_msg="/".join(key))
