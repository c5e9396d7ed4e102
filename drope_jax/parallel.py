"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names ('embed', 'heads', ...);
`RULES` decides where each lives on the mesh (data, fsdp, tensor). Changing the
parallelism of a run means changing `mesh.shape` in its config, never the model code.

A mesh axis that does not divide a dimension is dropped from that dimension's sharding
(the dimension is replicated over it) with a warning, instead of failing in XLA: e.g.
with 2 kv heads on tensor=4 every tensor shard holds both kv heads (as Megatron does for
GQA), and a vocabulary of 50257 on tensor=2 stays whole. Parameters keep their logical
names; `train_step.build` fits their shardings to their shapes. The batch is the
exception: `check_batch` asks for a batch that splits evenly.
"""

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from drope_jax import config as config_lib

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes. FSDP shards every weight along its embedding dimension and
# the batch with `data`; tensor parallelism splits heads, kv heads, MLP width and the
# vocabulary, in weights and in the activations between the matmuls they feed.
RULES = (
    ("layers", None),  # the stacked layer axis: every device holds its slice of each layer.
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
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
_RULES = dict(RULES)
_warned: set = set()


class MeshError(config_lib.ConfigError):
  """A mesh shape that does not fit the devices, the model or the batch."""


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
  """The (data, fsdp, tensor) mesh: `shape` within a slice (ICI) times `dcn_shape`
  across slices, so each axis spans shape[i] * dcn_shape[i] devices."""
  devices = jax.devices() if devices is None else list(devices)
  dcn_shape = tuple(int(s) for s in mesh_config.dcn_shape)
  if len(dcn_shape) != len(MESH_AXES) or min(dcn_shape) < 1:
    raise MeshError(f"mesh.dcn_shape={dcn_shape} needs {len(MESH_AXES)} positive entries")
  n_slices = math.prod(dcn_shape)
  if len(devices) % n_slices:
    raise MeshError(f"mesh.dcn_shape={dcn_shape} does not divide {len(devices)} devices")
  ici_shape = resolve_shape(mesh_config.shape, len(devices) // n_slices)
  if n_slices > 1:
    device_array = _hybrid_device_array(ici_shape, dcn_shape, devices)
  else:
    device_array = _device_array(ici_shape, devices)
  return jax.sharding.Mesh(
      device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _device_array(shape, devices) -> np.ndarray:
  """Devices laid out so that neighbours on the mesh are neighbours on the torus."""
  for split in (False, True):
    try:
      return mesh_utils.create_device_mesh(shape, devices=devices,
                                           allow_split_physical_axes=split)
    except (AssertionError, NotImplementedError, ValueError):
      pass
  if devices[0].platform == "tpu":
    logging.warning("mesh.shape=%s does not map onto the TPU torus; using device order "
                    "(slower collectives)", shape)
  # Process-major order: each process holds a contiguous block of the outer axes.
  return np.asarray(devices).reshape(shape)


def _hybrid_device_array(ici_shape, dcn_shape, devices) -> np.ndarray:
  # TPU slices carry `slice_index`; elsewhere (GPU hosts, CPU tests) a process is a slice.
  by_process = getattr(devices[0], "slice_index", None) is None
  try:
    return mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices=devices, process_is_granule=by_process,
        allow_split_physical_axes=True)
  except ValueError as e:
    unit = "processes" if by_process else "slices"
    raise MeshError(f"mesh.dcn_shape={dcn_shape} needs {math.prod(dcn_shape)} {unit} of "
                    f"{math.prod(ici_shape)} devices each ({e})") from e


def _mesh_axes(name: str | None) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in _RULES:
    raise KeyError(f"logical axis {name!r} is not in parallel.RULES")
  axes = _RULES[name]
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh=None) -> P:
  """The PartitionSpec of logical `names`; given a shape and mesh, one that divides it."""
  spec = P(*(_entry(_mesh_axes(n)) for n in names))
  if shape is None or mesh is None:
    return spec
  return fit_spec(spec, shape, mesh, what=f"{tuple(names)}")


def fit_spec(spec: P, shape: Sequence[int], mesh, what: str = "an array") -> P:
  """`spec` keeping, per dimension, the longest prefix of its mesh axes whose product
  divides the dimension; the rest are dropped (replicated), with a warning."""
  entries = []
  for i, dim in enumerate(shape):
    entry = spec[i] if i < len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    axes = tuple(a for a in axes if a in mesh.axis_names)
    kept = 0
    while kept < len(axes) and dim % math.prod(mesh.shape[a] for a in axes[:kept + 1]) == 0:
      kept += 1
    dropped = tuple(a for a in axes[kept:] if mesh.shape[a] > 1)
    if dropped and (dim, dropped) not in _warned:  # once, not once per layer.
      _warned.add((dim, dropped))
      logging.warning("a dimension of size %d (first: %s, dimension %d) does not split "
                      "over mesh axes %s of sizes %s: replicated over them", dim, what, i,
                      dropped, tuple(mesh.shape[a] for a in dropped))
    entries.append(_entry(axes[:kept]))
  return P(*entries)


def _entry(axes: tuple[str, ...]):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def fit_shardings(abstract_tree, shardings_tree):
  """NamedShardings of a tree of arrays, each fitted (`fit_spec`) to its array's shape."""
  def fit(path, array, sharding):
    spec = fit_spec(sharding.spec, array.shape, sharding.mesh,
                    what=jax.tree_util.keystr(path))
    return NamedSharding(sharding.mesh, spec)
  return jax.tree_util.tree_map_with_path(fit, abstract_tree, shardings_tree)


def logical_sharding(mesh, names: Sequence[str | None], shape=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding where XLA's propagation needs a hint."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.are_all_axes_manual:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def batch_sharding(mesh) -> NamedSharding:
  return logical_sharding(mesh, ("batch", "seq"))


def mesh_axes(name: str, mesh) -> tuple[str, ...]:
  """The axes of `mesh` that logical axis `name` is sharded over."""
  return tuple(a for a in _mesh_axes(name) if a in mesh.axis_names)


def shards(name: str, mesh) -> int:
  """Into how many pieces `mesh` splits logical axis `name`: rows of a batch must be a
  multiple of shards('batch', mesh)."""
  return math.prod(mesh.shape[a] for a in mesh_axes(name, mesh))


def check_batch(batch_size: int, grad_accum: int, mesh) -> None:
  """Raises MeshError unless every micro-batch splits evenly over the batch axes, and
  every process feeds its own rows (a batch replicated across processes would make
  each process's data slice a different 'global' batch)."""
  batch_shards = shards("batch", mesh)
  micro = batch_size // grad_accum
  if micro % batch_shards:
    raise MeshError(
        f"train.batch_size={batch_size} / train.grad_accum={grad_accum} = {micro} rows "
        f"per micro-batch do not split over data x fsdp = {batch_shards} devices "
        f"(mesh {dict(mesh.shape)}): make train.batch_size a multiple of "
        f"{batch_shards * grad_accum}")
  n_processes = len({d.process_index for d in mesh.devices.flat})
  if batch_shards % n_processes:
    raise MeshError(
        f"data x fsdp = {batch_shards} (mesh {dict(mesh.shape)}) must be a multiple of the "
        f"{n_processes} processes, so each process loads distinct rows: move devices "
        "from 'tensor' to 'data' or 'fsdp'")


@contextlib.contextmanager
def mesh_context(mesh):
  """The context every model build and step runs under: mesh plus logical rules."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    yield
