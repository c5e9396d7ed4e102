"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names ('embed', 'heads', ...);
`RULES` decides where each lives on the mesh (data, fsdp, tensor). Changing the
parallelism of a run means changing `mesh.shape` in its config, never the model code.
"""

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes. FSDP shards every weight along its embedding dimension;
# tensor parallelism splits heads, kv heads, MLP width and vocabulary.
RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
_RULES = dict(RULES)


class MeshError(ValueError):
  """A mesh shape that does not fit the devices or the model."""


def resolve_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
  """Replaces the single -1 in `shape` by whatever makes the product `n_devices`."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise MeshError(f"mesh.shape={shape} needs {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise MeshError(f"mesh.shape={shape}: use positive sizes and at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if n_devices % known:
    raise MeshError(f"mesh.shape={shape} does not divide the {n_devices} devices")
  shape = tuple(n_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != n_devices:
    raise MeshError(f"mesh.shape={shape} uses {math.prod(shape)} devices; there are "
                    f"{n_devices}: make the product match or put -1 on one axis")
  return shape


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """Builds the (data, fsdp, tensor) mesh; slices (DCN) multiply the data axis."""
  devices = jax.devices() if devices is None else list(devices)
  dcn_shape = tuple(int(s) for s in mesh_config.dcn_shape)
  n_slices = math.prod(dcn_shape)
  if len(devices) % n_slices:
    raise MeshError(f"mesh.dcn_shape={dcn_shape} does not divide {len(devices)} devices")
  ici_shape = resolve_shape(mesh_config.shape, len(devices) // n_slices)
  if n_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices=devices)
  else:
    try:
      device_array = mesh_utils.create_device_mesh(ici_shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
      # Topology-aware placement is only defined for some platforms and shapes.
      device_array = np.asarray(devices).reshape(ici_shape)
  return jax.sharding.Mesh(
      device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(names: Sequence[str | None]) -> P:
  return P(*(_RULES[n] if n is not None else None for n in names))


def logical_sharding(mesh, names: Sequence[str | None]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding where XLA's propagation needs a hint."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def batch_sharding(mesh) -> NamedSharding:
  return logical_sharding(mesh, ("batch", "seq"))


@contextlib.contextmanager
def mesh_context(mesh):
  """The context every model build and step runs under: mesh plus logical rules."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    yield
