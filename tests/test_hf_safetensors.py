"""safetensors I/O: bfloat16 stays bfloat16; size-limited shards and their index."""

import json

import ml_dtypes
import numpy as np
import safetensors.torch
import torch

from drope_jax.hf import safetensors_io


def test_reads_torch_bfloat16_tensors_bitwise_one_at_a_time(tmp_path):
  tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7.0)}
  safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"))
  lazy = safetensors_io.open_checkpoint(tmp_path)
  assert lazy["a"].shape == (3, 5) and lazy["a"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(lazy["a"].load().astype(np.float32),
                                tensors["a"].float().numpy())
  np.testing.assert_array_equal(lazy["b"].load(), tensors["b"].numpy())


def test_shards_at_the_size_limit_with_an_index_torch_reads(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {f"t{i}": rng.normal(size=(4, 8)).astype(ml_dtypes.bfloat16)
             for i in range(5)}  # 64 bytes each.
  files = safetensors_io.write_checkpoint(tmp_path, iter(tensors.items()), 150)
  assert len(files) == 4 and files[-1] == safetensors_io.INDEX  # 2 + 2 + 1 tensors.
  weight_map = json.loads((tmp_path / safetensors_io.INDEX).read_text())["weight_map"]
  for name, value in tensors.items():
    by_torch = safetensors.torch.load_file(str(tmp_path / weight_map[name]))[name]
    np.testing.assert_array_equal(by_torch.float().numpy(), value.astype(np.float32))
  lazy = safetensors_io.open_checkpoint(tmp_path)
  for name, value in tensors.items():
    assert lazy[name].load().tobytes() == value.tobytes()
