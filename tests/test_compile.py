"""Ahead-of-time compilation of the real train step for TPU slices (libtpu, no TPU)."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import pytest

from drope_jax import buffers
from drope_jax import compile as compile_lib
from drope_jax import flops
from drope_jax import parallel
from tests import helpers

pytest.importorskip("libtpu")

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, generation, grid", [
    ("v5p-8", "v5p", (2, 2, 1)),
    ("v5p-128", "v5p", (4, 4, 4)),
    ("v5p-256", "v5p", (4, 4, 8)),
    ("v4-32", "v4", (2, 2, 4)),
    ("v5e-4", "v5e", (2, 2)),
    ("v5litepod-32", "v5e", (4, 8)),
    ("v5e-256", "v5e", (16, 16)),
    ("v6e-64", "v6e", (8, 8)),
    ("v5p:4x4x12", "v5p", (4, 4, 12)),
])
def test_slice_names_map_to_chip_grids(name, generation, grid):
  topology = compile_lib.parse_topology(name)
  assert (topology.generation, topology.grid) == (generation, grid)


@pytest.mark.parametrize("name", ["v5p-12", "v5p-2", "v7-8", "tpu", "v5e:4x4x4", "v5e-0"])
def test_unknown_slices_are_clear_errors(name):
  with pytest.raises(compile_lib.TopologyError, match="topology"):
    compile_lib.parse_topology(name)


@pytest.mark.parametrize("name", ["v4-8", "v5p-8", "v5e-4", "v6e-4"])
def test_peak_flops_know_every_tpu_and_the_cpu(name):
  device = compile_lib.parse_topology(name).devices()[0]
  assert flops.peak_flops_per_device(device, "bfloat16") > 1e14
  assert flops.peak_flops_per_device(jax.devices()[0], "float32") > 0


def test_slices_multiply_the_data_axis():
  devices = compile_lib.parse_topology("v5e-4").devices(num_slices=2)
  mesh_config = ml_collections.ConfigDict(dict(shape=(1, 2, 2), dcn_shape=(2, 1, 1)))
  mesh = parallel.make_mesh(mesh_config, devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]


def _small_config():
  # Widths that stay multiples of 128 per chip, so TPU tile padding adds little.
  config = helpers.tiny_config("drope", vocab_size=1024, d_model=512, n_layers=2,
                               n_heads=8, n_kv_heads=8, head_dim=128, d_ff=1024,
                               attention="auto", dtype="bfloat16")
  config.train.update(batch_size=8, seq_len=256, steps=10, warmup_steps=2)
  config.drope.update(drop_at_step=5, warmup_steps=2)
  config.mesh.shape = (1, -1, 1)
  return config


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_both_phases_compile_with_splash_kernels_and_a_consistent_memory_report(
    scan_layers, tmp_path, monkeypatch):
  config = _small_config()
  config.model.scan_layers = scan_layers
  # A scanned program holds one layer's kernels (the loop body's); unrolled, every layer's.
  layers_in_program = 1 if scan_layers else config.model.n_layers
  dumps = []  # each compile's XLA dump, to check the report against XLA's own.

  def compile_keeping_the_dump(lowered, top=5):
    dumps.append(tmp_path / str(len(dumps)))
    compiled = lowered.compile(compiler_options={"xla_dump_to": str(dumps[-1])})
    return compiled, buffers.read(dumps[-1], top)

  monkeypatch.setattr(buffers, "compile_and_read", compile_keeping_the_dump)
  reports = list(compile_lib.compile_phases(config, compile_lib.parse_topology("v5p-8")))
  assert [(r.phase, r.positional) for r in reports] == [
      ("pretrain", "rope"), ("recalibrate", "nope")]
  # params, AdamW mu and nu in float32, FSDP over the 4 chips.
  state_per_chip = flops.params_count(config.model)["total"] * 4 * 3 / 4
  for report, dump in zip(reports, dumps, strict=True):
    # Splash forward and one fused backward (dq, dk, dv) per layer: 'auto' picked the TPU
    # kernels, and the fused backward leaves no separate dq kernel (it was 3 per layer).
    assert report.tpu_custom_calls == 2 * layers_in_program
    assert state_per_chip <= report.argument_bytes <= 1.1 * state_per_chip
    assert report.alias_bytes >= 0.9 * state_per_chip  # the donated state is reused.
    assert 0 < report.temp_bytes and report.fits
    # What the chip holds: the buffer assignment (state included) and the code; the
    # device part is the total of XLA's own memory-usage report.
    usage = max(dump.glob("*memory-usage-report.txt"), key=lambda p: p.stat().st_size)
    xla_total = re.search(r"Memory Space: default \(color=0\)\nTotal bytes: (\d+)",
                          usage.read_text())
    assert report.device_bytes == int(xla_total[1]) > report.argument_bytes
    assert report.total_bytes == report.device_bytes + report.code_bytes
    # Where the memory goes: the five largest buffers, each named by its JAX operation.
    sizes = [b.bytes for b in report.largest]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True)
    assert sizes[0] <= report.device_bytes
    assert {b.kind for b in report.largest} <= {"argument", "output", "temporary"}
    temporaries = [b for b in report.largest if b.kind == "temporary"]
    assert temporaries and all(b.op_name.startswith("jit(step_fn)") for b in temporaries)


@pytest.mark.parametrize("topology", ["v5e-4", "v6e-4"])
def test_splash_compiles_and_fits_on_v5e_and_v6e(topology):
  config = _small_config()
  config.model.attention = "splash"
  report, = compile_lib.compile_phases(config, compile_lib.parse_topology(topology),
                                       phases=("pretrain",))
  # The scanned layer's splash forward and fused backward (dq, dk, dv in one kernel).
  assert report.tpu_custom_calls == 2
  # libtpu reports 0 HBM temporaries for this small step on these chips, so only the
  # state is checked: present and fitting.
  assert report.argument_bytes > 0 and report.fits


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "drope_jax.compile", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_the_command_reports_memory_against_hbm():
  result = _cli("--config=configs/tiny.py:drope", "--topology=v5e-4", "--phase=recalibrate",
                "--config.train.seq_len=128", "--config.mesh.shape=(1,2,2)",
                "--config.model.n_layers=3", "--scan_layers=both")
  assert result.returncode == 0, result.stderr[-3000:]
  # 3 layers, each a splash forward + fused backward; scanned, the loop body's one layer.
  assert "phase recalibrate (nope, layers scanned)" in result.stdout
  assert "phase recalibrate (nope, layers unrolled)" in result.stdout
  assert "tpu_custom_call ops: 2;" in result.stdout
  assert "tpu_custom_call ops: 6;" in result.stdout
  assert "of 16.00 GiB HBM" in result.stdout and "fits" in result.stdout
  table = [line for line in result.stdout.splitlines() if line.startswith("| recalibrate")]
  assert [row.split("|")[2].strip() for row in table] == ["scanned", "unrolled"]


def test_the_command_refuses_an_unknown_topology():
  result = _cli("--config=configs/tiny.py", "--topology=v9-8")
  assert result.returncode == 2
  assert "unknown TPU generation 'v9'" in result.stderr
