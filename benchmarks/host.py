"""What a speed figure depends on: this host's CPU model, cores and vector extensions.

CPUs differ between machines of one kind (AVX-512 and AMX on some, AVX2 only on others),
so every benchmark that prints a speed prints this beside it.
"""

import os
import pathlib
import re


def cpu_flags() -> str:
  """The CPU model and its vector extensions (AVX-512, AMX) from /proc/cpuinfo."""
  info = pathlib.Path("/proc/cpuinfo").read_text()
  model = re.search(r"model name\s*:\s*(.*)", info).group(1)
  flags_line = re.search(r"flags\s*:\s*(.*)", info).group(1).split()
  vector = sorted(f for f in flags_line if f.startswith(("avx", "amx")))
  return f"{model}, {os.cpu_count()} cores; {' '.join(vector)}"
