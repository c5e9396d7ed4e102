"""Small shared builders for tests: a tiny config and a model built on a mesh."""

import jax
import ml_collections
from flax import nnx

from drope_jax import config as config_lib
from drope_jax import parallel
from drope_jax.model import transformer


def tiny_config(variant: str = "drope", **model_overrides) -> ml_collections.ConfigDict:
  config = config_lib.base_config(variant)
  config.model.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           head_dim=8, d_ff=64, attention="xla"))
  config.model.update(model_overrides)
  return config


def mesh(shape=(1, 1, 1)):
  n = shape[0] * shape[1] * shape[2]
  mesh_config = ml_collections.ConfigDict(dict(shape=shape, dcn_shape=(1, 1, 1)))
  return parallel.make_mesh(mesh_config, devices=jax.devices()[:n])


def build_model(model_config, seed: int = 0, on_mesh=None) -> transformer.Transformer:
  cfg = transformer.ModelConfig.from_config(model_config)
  with parallel.mesh_context(on_mesh or mesh()):
    return transformer.Transformer(cfg, rngs=nnx.Rngs(seed))
