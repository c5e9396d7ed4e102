"""A real multi-process job on 127.0.0.1: two processes of 4 CPU devices each."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# A DroPE run across its drop point (a checkpoint and an optimizer reset on the way).
ARGS = [
    "--config=configs/tiny.py:drope",
    "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.n_layers=2",
    "--config.model.n_heads=2", "--config.model.n_kv_heads=2", "--config.model.head_dim=16",
    "--config.train.seq_len=32", "--config.train.batch_size=8", "--config.train.steps=4",
    "--config.train.warmup_steps=1", "--config.train.log_every=1",
    "--config.train.eval_every=100", "--config.train.eval_batches=1",
    "--config.drope.drop_at_step=2", "--config.drope.warmup_steps=1",
    "--config.checkpoint.every_steps=100",
]
MESH = "--config.mesh.shape=(2,2,2)"  # a tuple override given twice concatenates.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("DROPE_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             DROPE_HEARTBEAT_TIMEOUT="10", DROPE_SHUTDOWN_TIMEOUT="30", **extra)
  return env


def _start(workdir, devices: int, *extra, **env) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *ARGS, *extra],
      cwd=REPO, env=_env(devices, **env), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _start_pair(workdir, *extra) -> list[subprocess.Popen]:
  coordinator = f"127.0.0.1:{_free_port()}"
  return [_start(workdir, 4, *extra, DROPE_COORDINATOR=coordinator,
                 DROPE_NUM_PROCESSES="2", DROPE_PROCESS_ID=str(i)) for i in range(2)]


def _wait(procs, timeout=300) -> list[tuple[int, str]]:
  out = []
  for p in procs:
    try:
      _, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError("a process hung") from None
    out.append((p.returncode, stderr))
  return out


def _losses(workdir) -> dict[int, float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_two_processes_train_like_one_process_with_all_devices(tmp_path):
  procs = [_start(tmp_path / "single", 8, MESH)] + _start_pair(tmp_path / "multi", MESH)
  results = _wait(procs)
  for rc, stderr in results:
    assert rc == 0, stderr[-3000:]
  single, multi = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert sorted(single) == sorted(multi) == [0, 1, 2, 3]
  np.testing.assert_allclose([multi[s] for s in range(4)], [single[s] for s in range(4)],
                             rtol=1e-5)


def test_a_config_error_exits_every_process(tmp_path):
  # A batch replicated over both processes cannot be fed process by process.
  results = _wait(_start_pair(tmp_path, "--config.mesh.shape=(1,1,8)"), timeout=120)
  for rc, stderr in results:
    assert rc == 2, stderr[-3000:]
    assert "must be a multiple of the 2 processes" in stderr


def test_a_dead_process_stops_the_other(tmp_path):
  procs = _start_pair(tmp_path, MESH, "--config.train.steps=100000",
                      "--config.drope.drop_at_step=50000")
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.monotonic() + 120
  while not (metrics.exists() and metrics.read_text().strip()):
    assert time.monotonic() < deadline and procs[0].poll() is None, "training never started"
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGKILL)
  started = time.monotonic()
  (rc, stderr), _ = _wait(procs, timeout=120)
  assert rc != 0
  assert time.monotonic() - started < 60, stderr[-2000:]
