"""Every test runs on CPU with 8 fake devices, so sharded code paths run for real."""

import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """The commands tests run share one persistent compilation cache (across pytest-xdist
  workers too: JAX writes its entries atomically): a train or evaluate of a config
  another test already ran loads its programs instead of compiling them. Set after
  collection, so this process's own JAX is unaffected; the tests of the cache itself
  take it out of their environment."""
  session_dir = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    session_dir = session_dir.parent  # the workers' basetemps share this parent.
  cache = session_dir / "jax_cache"
  cache.mkdir(exist_ok=True)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
    yield
