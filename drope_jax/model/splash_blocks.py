"""Splash attention block sizes: one table by TPU generation and sequence length.

Splash tiles the sequence into blocks. Forward: `q` and `kv` are the tiles copied from
HBM to VMEM, `kv_compute` the slice of a kv tile one inner step works on. The fused
backward (dq, dk and dv in one kernel) has its own `q_dkv`, `kv_dkv`, `kv_dkv_compute`.
Larger blocks mean fewer grid steps (less per-step overhead) but more wasted work on the
causal diagonal, more VMEM, and (fused backward) S / kv_dkv partial dq copies in HBM.
`model.splash_fused_bwd=False` computes dq in a kernel of its own instead (`q_dq`,
`kv_dq` blocks): one more pass over the blocks, no partial dq copies.

`model.splash_block_sizes` overrides any of them by name, e.g.
"q=1024,kv=1024,kv_compute=512"; unnamed ones come from the table. Table sizes shrink
to fit the sequence (the largest multiple of 128 dividing S, or dividing their kv block
for the *_compute ones); given sizes are used as they are and must fit.
"""

import dataclasses

from drope_jax import config as config_lib
from drope_jax import flops

KEY = "model.splash_block_sizes"
LANES = 128  # every block is a multiple of the TPU lane width.


@dataclasses.dataclass(frozen=True)
class Blocks:
  q: int
  kv: int
  kv_compute: int      # divides kv.
  q_dkv: int
  kv_dkv: int
  kv_dkv_compute: int  # divides kv_dkv.
  q_dq: int            # the unfused backward's dq kernel.
  kv_dq: int


NAMES = tuple(f.name for f in dataclasses.fields(Blocks))
# The block a *_compute size subdivides (its field comes first, so it is chosen first).
_WITHIN = {"kv_compute": "kv", "kv_dkv_compute": "kv_dkv"}

_B512 = Blocks(q=512, kv=512, kv_compute=512, q_dkv=512, kv_dkv=512, kv_dkv_compute=512,
               q_dq=512, kv_dq=512)
_B1024 = Blocks(q=1024, kv=1024, kv_compute=512, q_dkv=1024, kv_dkv=1024,
                kv_dkv_compute=512, q_dq=1024, kv_dq=1024)

# Chip (flops.chip_name of the device kind) -> ((shortest sequence length, blocks), ...),
# ascending; a sequence gets the last row it reaches. 512 is MaxText's default
# everywhere; the faster v5p and v6e take 1024 tiles for long sequences, where the
# diagonal's waste is small and per-step overhead dominates. Unknown chips and the CPU
# (interpret mode) use "default".
TABLE = {
    "default": ((0, _B512),),
    "tpu_v4": ((0, _B512),),
    "tpu_v5e": ((0, _B512),),
    "tpu_v5p": ((0, _B512), (4096, _B1024)),
    "tpu_v6e": ((0, _B512), (4096, _B1024)),
}


def choose(device_kind: str | None, seq_len: int, override: str = "") -> Blocks:
  """Block sizes for a sequence of `seq_len` (a multiple of 128) on `device_kind`."""
  rows = TABLE.get(flops.chip_name(device_kind or ""), TABLE["default"])
  table = next(blocks for start, blocks in reversed(rows) if seq_len >= start)
  given = parse(override)
  sizes = {}
  for name in NAMES:
    within = _WITHIN.get(name)
    whole = sizes[within] if within else seq_len
    if name not in given:
      sizes[name] = _fit(getattr(table, name), whole)
      continue
    if whole % given[name]:
      whole_name = f"{within}={whole}" if within else f"the sequence length {seq_len}"
      raise config_lib.ConfigError(
          f"--config.{KEY}={override!r}: {name}={given[name]} must divide {whole_name}; "
          f"give a multiple of {LANES} that does, or leave {name} out to use the table")
    sizes[name] = given[name]
  return Blocks(**sizes)


def parse(override: str) -> dict[str, int]:
  """'q=1024,kv=512' -> {'q': 1024, 'kv': 512}; '' -> {} (all from the table)."""
  sizes = {}
  for item in filter(None, (s.strip() for s in override.split(","))):
    name, _, size = (s.strip() for s in item.partition("="))
    if name not in NAMES or name in sizes:
      raise config_lib.ConfigError(
          f"--config.{KEY}={override!r}: {name!r} is not a block name or is repeated; "
          f"use NAME=SIZE,... with names from {', '.join(NAMES)}, or '' for the table")
    if not size.isdigit() or int(size) == 0 or int(size) % LANES:
      raise config_lib.ConfigError(
          f"--config.{KEY}={override!r}: {name}={size!r} must be a positive multiple of "
          f"{LANES}")
    sizes[name] = int(size)
  return sizes


def _fit(size: int, whole: int) -> int:
  """The largest multiple of 128 that is at most `size` and divides `whole`."""
  return max(b for b in range(LANES, min(size, whole) + 1, LANES) if whole % b == 0)
