"""A compiled program's device memory, from XLA's buffer-assignment dump.

XLA's memory analysis gives sums (arguments, outputs, temporaries), and on TPU its
temporaries count values that are never live at once: llama_7b on v5p-128 with 40
sequences a chip reports 100.9 GiB of temporaries and compiles for a 95 GiB chip. What
the chip must hold is in the buffer assignment, which XLA writes when asked to dump the
program (compiler option `xla_dump_to`, for this compile only): `compile_and_read`
returns the bytes it places in device memory (the default memory space; 72.4 GiB there)
and the largest buffers, each with its shape and the JAX operation that made it (the
HLO's op_name metadata).
"""

import dataclasses
import pathlib
import re
import tempfile

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(?:, color (\d+))?, (.*):$")
_VALUE = re.compile(r"^ value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): (\S+)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?(\S+) = ")
_OP_NAME = re.compile(r"metadata=\{op_name=\"([^\"]*)\"")
# Instructions that only move or view a buffer: they take their operand's op_name.
_FORWARD = re.compile(r" (?:copy-start|copy|bitcast|get-tuple-element)\(%?([^,)\s]+)")


@dataclasses.dataclass(frozen=True)
class Buffer:
  bytes: int
  kind: str     # argument | output | temporary
  shape: str    # without its layout, e.g. bf16[2,256,8,128]
  name: str     # the HLO instruction that defines it.
  op_name: str  # the JAX operation behind it; '' when XLA made it.
  others: int = 0  # values that occupy the same bytes at other times.


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
  """A compiled program's device memory as XLA's buffer assignment lays it out."""
  bytes: int  # every allocation in device memory, arguments included: what must fit.
  largest: tuple[Buffer, ...]  # descending.


def compile_and_read(lowered, top: int = 5):
  """(the compiled program, its DeviceMemory with the `top` largest buffers; None
  where XLA wrote no buffer assignment)."""
  with tempfile.TemporaryDirectory() as dump:
    compiled = lowered.compile(compiler_options={"xla_dump_to": dump})
    return compiled, read(pathlib.Path(dump), top)


def read(dump: pathlib.Path, top: int = 5) -> DeviceMemory | None:
  """The device memory in the buffer assignment dumped under `dump` (of its largest
  program: the dump may hold small helper programs too).

  A buffer is a range of device memory: values that XLA places in the same range at
  different times (a loop's state and its initial value, say) are one buffer, named
  by the first value XLA lists there.
  """
  assignments = sorted(dump.glob("*after_optimizations-buffer-assignment.txt"),
                       key=lambda p: p.stat().st_size)
  if not assignments:
    return None
  assignment = assignments[-1]
  hlo = assignment.with_name(assignment.name.replace("-buffer-assignment", ""))
  op_names = _op_names(hlo) if hlo.exists() else {}
  buffers, allocation, kind = {}, None, None  # (allocation, offset, size) -> Buffer.
  device_bytes = 0
  for line in assignment.read_text().splitlines():
    if line.startswith("allocation "):
      allocation, kind, size = _allocation(line)
      device_bytes += size
      continue
    value = _VALUE.match(line)
    if value and kind:
      # A tuple's element is named `instruction{index}`.
      name, size, offset, shape = value[1], int(value[2]), value[3], value[4]
      where = (allocation, offset, size)
      if where in buffers:
        buffers[where] = dataclasses.replace(buffers[where],
                                             others=buffers[where].others + 1)
      else:
        buffers[where] = Buffer(size, kind, shape.split("{")[0], name,
                                op_names.get(name.split("{")[0], ""))
  return DeviceMemory(device_bytes,
                      tuple(sorted(buffers.values(), key=lambda b: -b.bytes)[:top]))


def _allocation(line: str) -> tuple[str | None, str | None, int]:
  """(allocation number, argument / output / temporary, bytes) of an allocation in
  device memory; the kind is None for others (thread-local scalars, constants), and
  allocations in other memory spaces (on-chip scratch) count 0 bytes."""
  match = _ALLOCATION.match(line)
  if not match or (match[3] or "0") != "0":
    return None, None, 0
  number, size, what = match[1], int(match[2]), match[4]
  if what.startswith("parameter"):
    return number, "argument", size
  if what.startswith("output"):
    return number, "output", size
  if "preallocated-temp" in what:
    return number, "temporary", size
  return number, None, size


def _op_names(hlo: pathlib.Path) -> dict[str, str]:
  """Instruction -> op_name; a copy XLA added (a prefetch, a layout change) takes its
  operand's."""
  names, copied_from, current = {}, {}, None
  with open(hlo) as f:
    for line in f:  # an instruction may span lines (a kernel's backend config).
      if start := _INSTRUCTION.match(line):
        current = start[1]
        if forward := _FORWARD.search(line):
          copied_from[current] = forward[1]
      if current and current not in names and (op_name := _OP_NAME.search(line)):
        names[current] = op_name[1]
  for name, source in copied_from.items():
    for _ in range(8):  # a chain of copies.
      source = copied_from.get(source, source)
    if source in names:
      names[name] = names[source]
  return names


def describe(buffer: Buffer, width: int = 90) -> str:
  """'1.50 GiB temporary bf16[...] fusion.12 (jit(step_fn)/.../dot_general)'."""
  size = (f"{buffer.bytes / 2**30:.2f} GiB" if buffer.bytes >= 2**30 // 10
          else f"{buffer.bytes / 2**20:.1f} MiB")
  op = buffer.op_name if len(buffer.op_name) <= width else "..." + buffer.op_name[-width:]
  others = (f" (and {buffer.others} other value{'s' * (buffer.others > 1)} at other "
            "times)" if buffer.others else "")
  return f"{size:>10} {buffer.kind:<9} {buffer.shape} {buffer.name}{others}" + (
      f" ({op})" if op else "")
