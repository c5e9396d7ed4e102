"""safetensors files read one tensor at a time, and written in size-limited shards.

The format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}} and the raw bytes. Reading it by
hand (not through `safetensors.numpy`) keeps bfloat16 as bfloat16 (ml_dtypes) and
works on any epath (local or gs://), seeking to each tensor: host memory holds one
tensor at a time.
"""

import json
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np
from etils import epath

from drope_jax.hf.common import HFError, LazyTensor

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def _read_header(path: epath.Path) -> tuple[dict, int]:
  with path.open("rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
  header.pop("__metadata__", None)
  return header, 8 + length


def _load(path: epath.Path, start: int, entry: dict) -> np.ndarray:
  begin, end = entry["data_offsets"]
  with path.open("rb") as f:
    f.seek(start + begin)
    data = f.read(end - begin)
  return np.frombuffer(data, _DTYPES[entry["dtype"]]).reshape(entry["shape"])


def open_checkpoint(directory) -> dict[str, LazyTensor]:
  """name -> LazyTensor for model.safetensors or the shards its index lists.

  Raises HFError when a listed shard is missing or unreadable.
  """
  directory = epath.Path(directory)
  if (directory / INDEX).exists():
    weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
  elif (directory / SINGLE).exists():
    files = [SINGLE]
  else:
    raise HFError(
        f"{directory} has neither {SINGLE} nor {INDEX}: give the directory of a Hugging "
        "Face checkpoint (safetensors weights; convert .bin checkpoints first)")
  tensors = {}
  for name in files:
    path = directory / name
    if not path.exists():
      raise HFError(f"shard {path} listed in {INDEX} is missing: download "
                                 "the whole checkpoint")
    try:
      header, start = _read_header(path)
    except (OSError, ValueError, struct.error) as e:
      raise HFError(f"{path} is not a readable safetensors file ({e})") from e
    for tensor_name, entry in header.items():
      if entry["dtype"] not in _DTYPES:
        raise HFError(f"{path}: tensor {tensor_name} has unsupported dtype "
                                   f"{entry['dtype']}")
      tensors[tensor_name] = LazyTensor(
          shape=tuple(entry["shape"]), dtype=np.dtype(_DTYPES[entry["dtype"]]),
          load=lambda path=path, start=start, entry=entry: _load(path, start, entry))
  return tensors


def _write_file(path: epath.Path, tensors: Mapping[str, np.ndarray]):
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, array in tensors.items():
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)
  with path.open("wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for array in tensors.values():
      f.write(np.ascontiguousarray(array).tobytes())


def write_checkpoint(directory, tensors: Iterator[tuple[str, np.ndarray]],
                     max_shard_bytes: int) -> list[str]:
  """Writes (name, array) pairs into shards of at most `max_shard_bytes` (a tensor
  larger than that gets a shard of its own); an index when there are several.

  Holds one shard in memory at a time. Returns the files written.
  """
  directory = epath.Path(directory)
  shards, current, size = [], {}, 0

  def flush():
    nonlocal current, size
    if current:
      name = f"shard-{len(shards):05d}.safetensors"
      _write_file(directory / name, current)
      shards.append((name, list(current), size))
      current, size = {}, 0

  for name, array in tensors:
    if current and size + array.nbytes > max_shard_bytes:
      flush()
    current[name] = array
    size += array.nbytes
  flush()
  if len(shards) == 1:
    (directory / shards[0][0]).rename(directory / SINGLE)
    return [SINGLE]
  files, weight_map = [], {}
  for i, (name, names, _) in enumerate(shards):
    final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    (directory / name).rename(directory / final)
    files.append(final)
    weight_map.update({n: final for n in names})
  total = sum(size for _, _, size in shards)
  (directory / INDEX).write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return files + [INDEX]
