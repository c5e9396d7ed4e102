"""Every test runs on CPU with 8 fake devices, so sharded code paths run for real."""

import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """The commands tests run share one persistent compilation cache per test worker: a
  train or evaluate of a config another test already ran loads its programs instead of
  compiling them. Set after collection, so this process's own JAX is unaffected; the
  tests of the cache itself take it out of their environment."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    yield
