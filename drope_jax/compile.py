r"""Ahead-of-time compile of the real train step for a TPU slice, on any host.

  python -m drope_jax.compile --config=configs/llama_7b.py:drope --topology=v5p-128 \
      [--phase=all|pretrain|recalibrate] [--scan_layers=both] [--config.train.grad_accum=4 ...]

Needs libtpu (no TPU). Builds the config's mesh from the slice's device descriptions,
lowers and compiles `train_step.make_train_step` for each training phase (a DroPE run
has a RoPE and a NoPE phase) on abstract state and batch, and prints per-chip memory
against the chip's HBM (and its five largest buffers, with the JAX operations that
make them), the parameter count and FLOPs per token, and how many Pallas
TPU kernels (splash attention) the program holds. Exits 1 when a phase does not fit.
`--scan_layers=both` compiles every phase with the layers scanned and unrolled, and
prints their compile seconds, memory and FLOPs side by side.

Topologies: `v4-N` and `v5p-N` count TensorCores (2 per chip), `v5e-N` (or
`v5litepod-N`) and `v6e-N` count chips; N a power of two. Any chip grid can be given as
`v5p:4x4x12`. Multi-slice: set `--config.mesh.dcn_shape`; its product is the slice count.
"""

import dataclasses
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from drope_jax import buffers
from drope_jax import cli
from drope_jax import config as config_lib
from drope_jax import flops
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: configs/llama_7b.py:drope.",
    lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-128 or v5e:4x4.")
_PHASE = flags.DEFINE_enum("phase", "all", ["all", *plan_lib.PHASE_NAMES],
                           "Which training phase(s) to compile.")
_SCAN_LAYERS = flags.DEFINE_enum(
    "scan_layers", "config", ["config", "both"],
    "config: as model.scan_layers says; both: scanned and unrolled, side by side.")
flags.mark_flags_as_required(["config", "topology"])

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu_name: str    # prefix of libtpu's topology name.
  ndim: int           # chip grid dimensions: 3 (torus) or 2.
  chip_config: str
  cores_per_chip: int  # what the -N of a slice name counts per chip.
  hbm_gib: int


GENERATIONS = {
    "v4": Generation("v4", 3, "megacore", 2, 32),
    "v5p": Generation("v5", 3, "megacore", 2, 95),
    "v5e": Generation("v5e", 2, "default", 1, 16),
    "v6e": Generation("v6e", 2, "default", 1, 32),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


class TopologyError(config_lib.ConfigError):
  """A --topology this tool cannot map to a TPU slice."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  generation: str
  grid: tuple[int, ...]  # chips along each torus axis.

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def hbm_bytes(self) -> int:
    return GENERATIONS[self.generation].hbm_gib * GiB

  def devices(self, num_slices: int = 1):
    """One device description per chip (all slices), from libtpu."""
    # No TPU is driven here: let other processes load libtpu too (its lockfile guards
    # real chips), and spare libtpu the search for worker hosts.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    gen = GENERATIONS[self.generation]
    grid3 = (*self.grid, 1)[:3]
    # A host drives a 2x2 block of chips (a whole 8-chip v5e / v6e VM: 2x4).
    per_host = (2, 4, 1) if gen.ndim == 2 and self.chips == 8 else (2, 2, 1)
    per_host = tuple(min(h, g) for h, g in zip(per_host, grid3))
    return topologies.get_topology_desc(
        platform="tpu", topology_name=f"{gen.libtpu_name}:{'x'.join(map(str, self.grid))}",
        chip_config_name=gen.chip_config, chips_per_host_bounds=per_host,
        num_slices=num_slices).devices


def parse_topology(name: str) -> Topology:
  """`v5p-128`, `v5e-16`, `v6e-64`, `v4-32`, or an explicit grid `v5p:4x4x12`."""
  usage = ("use e.g. v5p-8, v5p-128, v5e-256, v6e-64, v4-32 (generations "
           f"{', '.join(GENERATIONS)}), or a chip grid such as v5p:4x4x12")
  match = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
  if not match:
    raise TopologyError(f"--topology={name!r} is not a TPU slice name: {usage}")
  generation = _ALIASES.get(match[1], match[1])
  if generation not in GENERATIONS:
    raise TopologyError(f"--topology={name!r}: unknown TPU generation {match[1]!r}: {usage}")
  gen = GENERATIONS[generation]
  if match[3]:
    grid = tuple(int(d) for d in match[3].split("x"))
    if len(grid) != gen.ndim or min(grid) < 1:
      raise TopologyError(f"--topology={name!r}: a {generation} grid has {gen.ndim} "
                          "positive dimensions")
    return Topology(name, generation, grid)
  count = int(match[2])
  chips, rest = divmod(count, gen.cores_per_chip)
  smallest = 4 if gen.ndim == 3 else 1
  if rest or chips < smallest or chips & (chips - 1):
    per = "TensorCores (2 per chip)" if gen.cores_per_chip == 2 else "chips"
    raise TopologyError(
        f"--topology={name!r}: {generation}-N counts {per}; N must give a power of two "
        f"of at least {smallest} chips here. For other shapes give the grid: "
        f"{generation}:AxB{'xC' if gen.ndim == 3 else ''}")
  return Topology(name, generation, _grid(chips, gen.ndim))


def _grid(chips: int, ndim: int) -> tuple[int, ...]:
  """The standard slice shape: grow the last of the shortest axes (2x2x1, 2x2x2,
  2x2x4, 2x4x4, 4x4x4, ...; 1x1, 1x2, 2x2, 2x4, 4x4, ...)."""
  grid = [2, 2, 1] if ndim == 3 else [1, 1]
  while math.prod(grid) < chips:
    shortest = min(grid)
    grid[max(i for i, g in enumerate(grid) if g == shortest)] *= 2
  return tuple(grid)


@dataclasses.dataclass(frozen=True)
class Report:
  """Per-chip figures of one compiled train step."""
  phase: str
  positional: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int      # outputs written in place of donated arguments.
  temp_bytes: int       # XLA's sum over temporaries, live at once or not.
  code_bytes: int
  hbm_bytes: int
  tpu_custom_calls: int
  compile_seconds: float
  flops: float = 0.0    # XLA's count for the step, per chip (custom kernels not counted).
  scan_layers: bool = True
  out_of_memory: str | None = None  # the compiler's message; the byte counts are then 0.
  largest: tuple[buffers.Buffer, ...] = ()  # the largest buffers per chip, descending.
  # Device memory in XLA's buffer assignment, arguments included (0: none was written).
  device_bytes: int = 0

  @property
  def total_bytes(self) -> int:
    """What a chip holds: the buffer assignment and the code; without an assignment,
    the sums (an upper bound: temporaries that are never live together all count)."""
    if self.device_bytes:
      return self.device_bytes + self.code_bytes
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  @property
  def fits(self) -> bool:
    return self.out_of_memory is None and self.total_bytes <= self.hbm_bytes


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch, as the data pipeline yields it."""
  shape = (config.train.batch_size, config.train.seq_len)
  sharding = parallel.batch_sharding(mesh)
  dtypes = dict(inputs=jnp.int32, targets=jnp.int32, positions=jnp.int32,
                segment_ids=jnp.int32, weights=jnp.float32)
  return {k: jax.ShapeDtypeStruct(shape, d, sharding=sharding) for k, d in dtypes.items()}


def topology_mesh(config, topology: Topology) -> jax.sharding.Mesh:
  """The config's mesh on the slice's devices (times `mesh.dcn_shape` slices)."""
  num_slices = math.prod(config.mesh.dcn_shape)
  return parallel.make_mesh(config.mesh, topology.devices(num_slices))


def compile_phases(config, topology: Topology, phases=plan_lib.PHASE_NAMES):
  """Compiles the train step of each of `phases` the config has; yields Reports."""
  config_lib.validate(config)
  mesh = topology_mesh(config, topology)
  tx = optim.make_optimizer(config.train)
  batch = abstract_batch(config, mesh)
  plan = plan_lib.make(config)
  for phase in (p for p in plan.phases if p.name in phases):
    built, _ = train_step.build(config, mesh, tx, phase.model_config(config.model))
    positional = phase.positional
    step = train_step.make_train_step(config, built, optim.lr_schedule(config), positional)
    start = time.perf_counter()
    try:
      compiled, device = buffers.compile_and_read(step.lower(built.abstract_state, batch))
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      yield Report(phase=phase.name, positional=positional.kind, argument_bytes=0,
                   output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0,
                   hbm_bytes=topology.hbm_bytes, tpu_custom_calls=0,
                   compile_seconds=time.perf_counter() - start,
                   scan_layers=config.model.scan_layers, out_of_memory=str(e).strip())
      continue
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    yield Report(
        phase=phase.name, positional=positional.kind,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        hbm_bytes=topology.hbm_bytes,
        tpu_custom_calls=compiled.as_text().count('custom_call_target="tpu_custom_call"'),
        compile_seconds=seconds, flops=_flops(compiled),
        scan_layers=config.model.scan_layers,
        largest=device.largest if device else (),
        device_bytes=device.bytes if device else 0)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per device.
  return float((cost or {}).get("flops", 0.0))


def _with_scan_layers(config, scan: bool):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.scan_layers = scan
  return config


def _gib(n: int) -> str:
  return f"{n / GiB:.2f} GiB" if n >= GiB // 10 else f"{n / 2**20:.1f} MiB"


def _describe(config, topology: Topology) -> str:
  m, t = config.model, config.train
  mesh = topology_mesh(config, topology)
  kind = mesh.devices.flat[0].device_kind
  params = flops.params_count(m)["total"]
  per_token = flops.training_flops_per_token(m, t.seq_len)
  peak = flops.peak_flops_per_device(kind, m.dtype)
  slices = math.prod(config.mesh.dcn_shape)
  lines = [
      f"{topology.name}: {slices} x {topology.chips} chips ({kind}, "
      f"{_gib(topology.hbm_bytes)} HBM each); mesh {dict(mesh.shape)}",
      f"params: {params / 1e9:.3f}B = {_gib(params * 4)} float32 "
      f"(+ {_gib(params * 8)} AdamW moments)",
      f"batch {t.batch_size} x {t.seq_len} tokens, grad_accum {t.grad_accum}, "
      f"remat {m.remat}, attention {m.attention}, compute {m.dtype}",
      f"model FLOPs per token: {per_token:.4g} "
      f"(step: {per_token * t.batch_size * t.seq_len:.4g}; chip peak "
      f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s)",
  ]
  return "\n".join(lines)


def _format(report: Report) -> str:
  if report.out_of_memory:
    return (f"phase {report.phase} ({report.positional}): DOES NOT FIT "
            f"({report.compile_seconds:.0f} s): {report.out_of_memory}")
  verdict = "fits" if report.fits else "DOES NOT FIT"
  layers = "scanned" if report.scan_layers else "unrolled"
  return "\n".join([
      f"phase {report.phase} ({report.positional}, layers {layers}): compiled in "
      f"{report.compile_seconds:.0f} s; tpu_custom_call ops: {report.tpu_custom_calls}; "
      f"XLA FLOPs {report.flops:.4g}",
      f"  per chip: arguments {_gib(report.argument_bytes)}, outputs "
      f"{_gib(report.output_bytes)} (aliased to donated arguments "
      f"{_gib(report.alias_bytes)}), temporaries {_gib(report.temp_bytes)} (XLA's sum, "
      f"not all live at once), generated code {_gib(report.code_bytes)}",
      f"  total {_gib(report.total_bytes)} of {_gib(report.hbm_bytes)} HBM "
      f"({report.total_bytes / report.hbm_bytes:.0%}): {verdict}"
      + (" (device memory in XLA's buffer assignment + code)" if report.device_bytes
         else " (sums: an upper bound)"),
      "  largest buffers:",
      *(f"  {buffers.describe(b)}" for b in report.largest),
  ])


def _side_by_side(reports: list[Report]) -> str:
  """A markdown table: each phase's scanned and unrolled compile, one row each."""
  rows = ["| phase | layers | compile s | per-chip total | temporaries (sum) | XLA FLOPs |",
          "|---|---|---:|---:|---:|---:|"]
  for r in sorted(reports, key=lambda r: (r.phase, not r.scan_layers)):
    total = "OOM" if r.out_of_memory else _gib(r.total_bytes)
    rows.append(f"| {r.phase} | {'scanned' if r.scan_layers else 'unrolled'} | "
                f"{r.compile_seconds:.1f} | {total} | {_gib(r.temp_bytes)} | {r.flops:.4g} |")
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  phases = plan_lib.PHASE_NAMES if _PHASE.value == "all" else (_PHASE.value,)
  topology = parse_topology(_TOPOLOGY.value)
  print(_describe(config, topology), flush=True)
  configs = [config]
  if _SCAN_LAYERS.value == "both":
    configs = [_with_scan_layers(config, scan) for scan in (True, False)]
  reports = []
  for variant in configs:
    for report in compile_phases(variant, topology, phases):
      print(_format(report), flush=True)
      reports.append(report)
  if len(configs) > 1 and reports:
    print(_side_by_side(reports), flush=True)
  if not reports:
    cli.fail(f"--phase={_PHASE.value} is not a phase of model.pos_emb="
             f"{config.model.pos_emb}")
  if not all(r.fits for r in reports):
    sys.exit(1)  # an answer, not an error: the config does not fit this slice.


if __name__ == "__main__":
  cli.run(main, config_flag="config")
