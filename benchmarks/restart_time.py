r"""Restart-to-first-step time of a resumed run, with an empty (cold) and a populated
(warm) persistent compilation cache, and where that time goes.

  python -m benchmarks.restart_time [--repeats=3] [--root=/tmp/drope_restart_time] \
      [-- --config=configs/tiny.py ...]

Everything after `--` goes to `python -m drope_jax.train` (default: configs/tiny.py).
A first run is stopped with SIGTERM after its first step (it saves a checkpoint and
exits); each measured run resumes a copy of that workdir and is killed once its first
step is done. Cold and warm runs alternate; a warm run uses the cache the cold run
before it wrote. Prints the median of each part over `--repeats` pairs: `wall` from
starting the process until the first step is done, `cpu` the CPU seconds the process
used until then (all threads; steadier than wall time on a shared machine), `other` what
the parts leave of the wall time (interpreter start, flags, ...), and the parts of
benchmarks/restart_time_child.py.
"""

import json
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Cold/warm pairs to take the median of.")
_ROOT = flags.DEFINE_string("root", "/tmp/drope_restart_time",
                            "Holds the runs, caches and logs (emptied first).")

DEFAULT_ARGS = ["--config=configs/tiny.py"]
# As restart_time_child spells them (not imported here: it imports jax and the trainer).
MARK = "restart_time parts: "
PARTS = ("imports", "trainer setup", "data pipeline", "checkpoint restore", "first step",
         "jax: tracing", "jax: lowering", "jax: compiling or loading")
_SEQUENTIAL = PARTS[:5]  # the rest overlap these.


def _run(workdir: pathlib.Path, cache: str, train_args: list[str],
         log: pathlib.Path) -> dict:
  """One run until its first step is done; then it is killed."""
  cmd = [sys.executable, "-m", "benchmarks.restart_time_child", f"--workdir={workdir}",
         *train_args, f"--config.compilation_cache_dir={cache}"]
  start = time.time()
  with log.open("w") as stderr:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in proc.stdout:
      if line.startswith(MARK):
        wall = time.time() - start
        proc.kill()
        proc.wait()
        parts = json.loads(line[len(MARK):])
        return dict(parts, wall=wall, other=wall - sum(parts[p] for p in _SEQUENTIAL))
  sys.exit(f"the run ended before its first step ({proc.wait()}): see {log}")


def _prepare(root: pathlib.Path, train_args: list[str]) -> pathlib.Path:
  """A workdir with a checkpoint: a run stopped by SIGTERM after its first step."""
  workdir = root / "prepared"
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *train_args,
         "--config.compilation_cache_dir=none"]
  with (root / "prepared.log").open("w") as stderr:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in proc.stdout:
      if line.startswith("first step done"):
        proc.send_signal(signal.SIGTERM)
    if proc.wait():
      sys.exit(f"the preparing run failed: see {root / 'prepared.log'}")
  return workdir


def main(argv):
  train_args = argv[1:] or DEFAULT_ARGS
  root = pathlib.Path(_ROOT.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  prepared = _prepare(root, train_args)
  runs = {"cold": [], "warm": []}
  for i in range(_REPEATS.value):
    cache = root / f"cache{i}"  # empty for the cold run, its entries for the warm one.
    for kind, results in runs.items():
      workdir = root / f"{kind}{i}"
      shutil.copytree(prepared, workdir)
      results.append(_run(workdir, str(cache), train_args, root / f"{kind}{i}.log"))
      r = results[-1]
      print(f"{kind} {i}: {r['wall']:.1f} s, {r['hits']} hits, {r['misses']} misses",
            flush=True)
  rows = ("wall", "cpu", *_SEQUENTIAL, "other", *PARTS[len(_SEQUENTIAL):])
  median = {kind: {row: statistics.median(r[row] for r in results) for row in rows}
            for kind, results in runs.items()}
  print(f"\nrestart to first step, resumed: {' '.join(train_args)}; seconds, median of "
        f"{_REPEATS.value}\n")
  print("| part | cold | warm |\n|---|---:|---:|")
  for row in rows:
    print(f"| {row} | {median['cold'][row]:.2f} | {median['warm'][row]:.2f} |")
  print(f"\nwarm / cold: {median['warm']['wall'] / median['cold']['wall']:.2f}")


if __name__ == "__main__":
  app.run(main)
