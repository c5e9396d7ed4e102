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
import time

from etils import epath


def is_remote(path) -> bool:
  return "://" in str(path)


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
