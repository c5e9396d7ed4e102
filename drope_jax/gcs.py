"""Metrics for a gs:// workdir: written to a local directory, copied to the bucket.

A GCS object cannot be appended to, and a gcsfs file reaches the bucket only when it
is closed. So for a gs:// workdir `metrics.jsonl` and the TensorBoard event files are
written locally and uploaded whole by `sync()`: at every checkpoint, at most every
`every_secs` in between, and at exit. The bucket's `metrics.jsonl` is downloaded first
so that a resumed run appends to it. Checkpoints do not go through here: orbax writes
them to gs:// directly.
"""

import hashlib
import pathlib
import shutil
import tempfile
import threading
import time

from etils import epath

from drope_jax import errors

# gcsfs retries a refused connection for ~40 s, then raises from deep in aiohttp.
PROBE_SECONDS = 20


class UnreachableError(errors.BadInput):
  """A bucket that does not answer, does not exist, or is not visible to us."""


def is_remote(path) -> bool:
  return "://" in str(path)


def check_reachable(path: str, timeout: float = PROBE_SECONDS) -> None:
  """Raises UnreachableError, naming the bucket, unless it answers within `timeout`."""
  bucket = "/".join(str(path).split("/")[:3])  # gs://name
  answer = {}

  def probe():
    try:
      answer["exists"] = epath.Path(bucket).exists()
    except Exception as e:  # pylint: disable=broad-except  (any transport error)
      answer["error"] = f"{type(e).__name__}: {str(e)[:200]}"

  thread = threading.Thread(target=probe, daemon=True)  # a hung probe must not block exit.
  thread.start()
  thread.join(timeout)
  fix = ("check the bucket's name, the network, and that this machine's credentials "
         "may read it (gcloud auth application-default login, or the VM's service "
         "account)")
  if thread.is_alive():
    raise UnreachableError(f"{bucket} did not answer within {timeout:.0f} s: {fix}")
  if "error" in answer:
    raise UnreachableError(f"cannot reach {bucket} ({answer['error']}): {fix}")
  if not answer["exists"]:
    raise UnreachableError(f"{bucket} does not exist or is not visible: {fix}")


class MetricsMirror:
  """A local stand-in for the metric files of a remote workdir."""

  def __init__(self, remote: str, every_secs: float = 60.0):
    self.remote = epath.Path(remote)
    # One directory per workdir: a restart after a kill clears what the killed run left.
    self.local = pathlib.Path(tempfile.gettempdir(), "drope_metrics", hashlib.sha256(
        str(self.remote).encode()).hexdigest()[:16])
    shutil.rmtree(self.local, ignore_errors=True)
    self.local.mkdir(parents=True)
    self.every_secs = every_secs
    self._uploaded = {}  # relative path -> (size, mtime) last uploaded.
    self._last_sync = time.monotonic()
    jsonl = self.remote / "metrics.jsonl"
    if jsonl.exists():
      (self.local / "metrics.jsonl").write_bytes(jsonl.read_bytes())

  def sync(self, *, force: bool = False):
    """Uploads every local file that changed since its last upload."""
    if not force and time.monotonic() - self._last_sync < self.every_secs:
      return
    self._last_sync = time.monotonic()
    for path in self.local.rglob("*"):
      if not path.is_file():
        continue
      stat = path.stat()
      relative = str(path.relative_to(self.local))
      if self._uploaded.get(relative) == (stat.st_size, stat.st_mtime_ns):
        continue
      (self.remote / relative).write_bytes(path.read_bytes())
      self._uploaded[relative] = (stat.st_size, stat.st_mtime_ns)

  def close(self):
    self.sync(force=True)
    shutil.rmtree(self.local, ignore_errors=True)
