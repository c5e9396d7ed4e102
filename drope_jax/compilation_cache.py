"""JAX's persistent compilation cache: a restarted or resumed run loads its compiled
programs instead of compiling them again.

`config.compilation_cache_dir` names the directory (local or gs://); unset, it is JAX's
own $JAX_COMPILATION_CACHE_DIR if that is set (one cache shared by many runs), else
`<workdir>/compilation_cache`; `none` (or empty) turns the cache off. `train` and
`evaluate` call `enable` once per process, after `distributed.initialize` and before
their first compile (JAX opens the cache at its first compile and keeps it).

Several processes may share one directory: each reads it, and JAX writes from process 0
only (the others compile their own copy). Entries are keyed by the program, devices,
compile options and jax/jaxlib version: a changed model, mesh or jax release misses and
compiles afresh. As JAX warns, whoever can write to the directory can make the run
execute their code: keep it private to the run's owner.
"""

import os

import jax
from etils import epath

from drope_jax import directories
from drope_jax import gcs

_OFF = ("", "none")
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"
_counts = {_REQUESTS: 0, _HITS: 0}
_enabled = False


def enable(setting: str | None, workdir: str) -> str | None:
  """Turns the cache on where `setting` (config.compilation_cache_dir) says; returns
  the directory, or None when the setting turns it off."""
  global _enabled
  if setting is None and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
    label = f"$JAX_COMPILATION_CACHE_DIR={path}"
  elif setting is None:
    path = str(epath.Path(workdir) / "compilation_cache")
    label = f"--workdir={workdir}"  # the workdir's own check, with its own flag.
  elif setting.strip().lower() in _OFF:
    return None
  else:
    path, label = setting, f"--config.compilation_cache_dir={setting}"
  directories.check_writable(path, label)
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX's defaults skip programs that compiled in under 1 s. On a CPU a small model's
  # step, its init or the restore's checkpoint fingerprinting can be that quick, and
  # every restart would compile them again: keep every program (one small file each).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no minimum.
  if gcs.is_remote(path):
    # XLA's own caches (GPU autotuning results) go through XLA's C++ file I/O, which
    # jaxlib builds without gs:// support.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
  if not _enabled:
    jax.monitoring.register_event_listener(_count)
    _enabled = True
  return path


def _count(event: str, **kwargs):
  del kwargs
  if event in _counts:
    _counts[event] += 1


def summary() -> str:
  """`compilation cache: H hits, M misses` over this process's compiles so far."""
  if not _enabled:
    return "compilation cache off"
  requests, hits = _counts[_REQUESTS], _counts[_HITS]
  return f"compilation cache: {hits} hits, {requests - hits} misses"
