"""The persistent compilation cache: a second process loads what the first compiled,
from a local directory and from gs://; `none` turns it off; a bad directory is refused."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from drope_jax import compilation_cache
from drope_jax import config as config_lib
from tests import gcs_emulator

REPO = pathlib.Path(__file__).resolve().parent.parent
# One RoPE step of a small model: two programs (init, train step) to compile and cache.
SMALL = [
    "--config=configs/tiny.py:rope",
    "--config.model.d_model=64", "--config.model.d_ff=128", "--config.model.n_layers=2",
    "--config.model.n_heads=2", "--config.model.n_kv_heads=1", "--config.model.head_dim=32",
    "--config.train.seq_len=64", "--config.train.batch_size=8", "--config.train.steps=1",
    "--config.train.warmup_steps=0", "--config.train.eval_batches=0",
]
_FIRST_STEP = re.compile(r"first step done [\d.]+ s after the process started "
                         r"\(compilation cache: (\d+) hits, (\d+) misses\)")


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
  env.pop("XLA_FLAGS", None)  # one CPU device, like a user's laptop.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the workdir's own cache is under test.
  return env


def _train(workdir, *extra) -> tuple[int, int]:
  """Trains one step; returns the (hits, misses) its first-step line reports."""
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *SMALL, *extra]
  result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  found = _FIRST_STEP.search(result.stdout)
  assert found, result.stdout
  return int(found[1]), int(found[2])


def test_a_second_run_loads_every_program_the_first_compiled(tmp_path):
  first = tmp_path / "first"
  hits, misses = _train(first)
  assert hits == 0 and misses >= 2
  cache = first / "compilation_cache"  # the default: inside the workdir.
  assert len(list(cache.glob("*-cache"))) >= misses  # and what ran after step 0.
  # Another workdir on the same cache: the same programs, none compiled again.
  assert _train(tmp_path / "second", f"--config.compilation_cache_dir={cache}") == (
      misses, 0)


_PROGRAM = """
import jax, jax.numpy as jnp
from drope_jax import compilation_cache
compilation_cache.enable("gs://drope-cache/jax", "unused")
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((4, 4))).block_until_ready()
print(compilation_cache.summary())
"""


def test_a_gs_cache_serves_a_second_process():
  with gcs_emulator.serve("drope-cache") as gcs_env:
    outputs = [subprocess.run([sys.executable, "-c", _PROGRAM], cwd=REPO,
                              env=_env(**gcs_env), capture_output=True, text=True,
                              timeout=300) for _ in range(2)]
  for result in outputs:
    assert result.returncode == 0, result.stderr[-3000:]
  first, second = (result.stdout.strip() for result in outputs)
  misses = int(re.search(r"0 hits, (\d+) misses", first)[1])
  assert misses >= 1 and second == f"compilation cache: {misses} hits, 0 misses"


@pytest.mark.parametrize("setting", ["none", "None", ""])
def test_none_or_empty_turns_the_cache_off(setting, tmp_path):
  assert compilation_cache.enable(setting, str(tmp_path)) is None
  assert not (tmp_path / "compilation_cache").exists()


def test_a_cache_directory_under_a_file_is_refused_by_its_key(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(config_lib.ConfigError,
                     match=r"--config.compilation_cache_dir=.*/a_file/cache: .*a_file "
                           "is a file, not a directory"):
    compilation_cache.enable(str(tmp_path / "a_file" / "cache"), str(tmp_path / "run"))
