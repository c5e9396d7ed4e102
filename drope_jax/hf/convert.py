"""The import seam: (HF config, lazily loaded HF tensors, tokenizer files) -> a workdir.

    convert.import_model(hf_config, tensors, tokenizer_files, workdir)

- hf_config: config.json as a dict (the architecture, shapes and RoPE settings).
- tensors: name -> LazyTensor, in Hugging Face naming and layout (q_proj.weight is
  [H*D, E], ...). Shapes are checked against hf_config before anything is loaded or
  written; then each tensor is loaded once, converted, and placed straight onto its
  sharding on the mesh (host memory stays near the largest tensor).
- tokenizer_files: file name -> bytes (tokenizer.json, tokenizer_config.json, ...),
  copied to WORKDIR/hf/ next to config.json; `data.tokenizer` points there, and
  `data.framing` records how the source tokenizer starts a text (BOS or nothing:
  drope_jax/hf/source_tokenizer.py), which generate and evaluate follow.

safetensors checkpoints (drope_jax/hf/importer.py) and GGUF files come in through
this one function. It writes WORKDIR/checkpoints/0 (params; fresh AdamW state; the
metadata `evaluate`, `generate` and `train --config.checkpoint.init_from` read) and
WORKDIR/config.json + config.py (the implied run config). Every check runs before
anything is written: HFError means nothing was written.
"""

import collections
import json
import os
import tempfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from drope_jax import checkpoint
from drope_jax import config as config_lib
from drope_jax import gcs
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step
from drope_jax.data import tokenizers
from drope_jax.hf import architectures
from drope_jax.hf import source_tokenizer
from drope_jax.hf import tensors as tensors_lib
from drope_jax.hf.common import HFError, LazyTensor

SOURCE_DIR = "hf"  # WORKDIR/hf: the source's config.json and tokenizer files.


def _run_config(hf_config: dict, workdir: str, *, param_dtype: str, mesh_shape):
  model_keys, context = architectures.to_model_keys(hf_config)
  config = config_lib.base_config("rope")
  config.model.update(model_keys)
  config.model.param_dtype = param_dtype
  config.model.attention = "auto"
  config.train.seq_len = context
  config.data.tokenizer = f"hf:{os.path.join(workdir, SOURCE_DIR, 'tokenizer.json')}"
  config.mesh.shape = tuple(mesh_shape)
  config_lib.validate(config)
  return config


def _check_tensors(entries, tensors: Mapping[str, LazyTensor], model):
  missing = [e.hf for e in entries if e.hf not in tensors]
  if missing:
    raise HFError(f"{len(missing)} tensors are missing, e.g. {missing[:3]}: the "
                  "checkpoint is incomplete or is not the architecture in config.json")
  for e in entries:
    if tuple(tensors[e.hf].shape) != e.hf_shape:
      raise HFError(f"tensor {e.hf} has shape {tuple(tensors[e.hf].shape)} but "
                    f"config.json implies {e.hf_shape}: the config and the weights "
                    "disagree")
  known = {e.hf for e in entries}
  ignorable = lambda n: n.endswith("rotary_emb.inv_freq") or (
      n == "lm_head.weight" and model.tie_embeddings)
  unknown = [n for n in tensors if n not in known and not ignorable(n)]
  if unknown:
    raise HFError(f"{len(unknown)} tensors have no place in this model, e.g. "
                  f"{unknown[:3]}: an architecture variant that is not supported")


def _check_tokenizer(tokenizer_files: Mapping[str, bytes], vocab_size: int,
                     tmp: str) -> tokenizers.Tokenizer:
  if "tokenizer.json" not in tokenizer_files:
    raise HFError("no tokenizer.json: the importer needs the fast (tokenizers) "
                  "tokenizer file next to config.json, or given with --tokenizer")
  os.makedirs(tmp, exist_ok=True)
  for name, data in tokenizer_files.items():
    with open(os.path.join(tmp, name), "wb") as f:
      f.write(data)
  try:
    tokenizer = tokenizers.get_tokenizer(f"hf:{os.path.join(tmp, 'tokenizer.json')}")
  except ValueError as e:
    raise HFError(str(e)) from e
  if tokenizer.vocab_size > vocab_size:
    raise HFError(f"tokenizer.json has {tokenizer.vocab_size} ids but config.json's "
                  f"vocab_size is {vocab_size}: the tokenizer is not this model's")
  return tokenizer


def _place(entries, tensors: Mapping[str, LazyTensor],
           target: jax.ShapeDtypeStruct) -> jax.Array:
  """Loads the HF tensors of one parameter (one per layer when it is stacked) and puts
  our layout of them on `target`'s sharding."""
  values = [_finite(e.hf, e.to_ours(tensors[e.hf].load()).astype(target.dtype))
            for e in entries]
  value = values[0] if entries[0].layer is None else np.stack(values)
  return jax.make_array_from_callback(target.shape, target.sharding,
                                      lambda index: value[index])


def _finite(name: str, value: np.ndarray) -> np.ndarray:
  """Checked as each tensor is read, before anything is written: NaN or inf weights
  would import, then generate nothing."""
  finite = np.isfinite(value)
  if not finite.all():
    raise HFError(f"tensor {name} holds {finite.size - np.count_nonzero(finite)} "
                  f"non-finite values (NaN or inf) of {finite.size}: the checkpoint is "
                  "damaged; download or convert it again")
  return value


def import_model(hf_config: dict, tensors: Mapping[str, LazyTensor],
                 tokenizer_files: Mapping[str, bytes], workdir: str, *,
                 param_dtype: str = "float32", mesh_shape=(-1, 1, 1),
                 devices=None) -> ml_collections.ConfigDict:
  """Writes WORKDIR as a step-0 RoPE run holding the HF model; returns its config."""
  if not gcs.is_remote(workdir):
    workdir = os.path.abspath(workdir)
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
    raise HFError(f"{ckpt_dir} already holds checkpoints: import into a new --workdir")
  try:
    config = _run_config(hf_config, workdir, param_dtype=param_dtype,
                         mesh_shape=mesh_shape)
    mesh = parallel.make_mesh(config.mesh, devices)
  except config_lib.ConfigError as e:
    raise HFError(str(e)) from e
  entries = tensors_lib.entries(config.model)
  _check_tensors(entries, tensors, config.model)
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = _check_tokenizer(tokenizer_files, config.model.vocab_size, tmp)
  config.data.framing = source_tokenizer.framing(tokenizer_files, tokenizer.bos_id)

  # Every check passed: from here on, write.
  tx = optim.make_optimizer(config.train)
  built, _ = train_step.build(config, mesh, tx)
  targets = {checkpoint.path_key(p)[:-1]: leaf for p, leaf in
             jax.tree_util.tree_flatten_with_path(built.abstract_state.params)[0]}
  by_param = collections.defaultdict(list)
  for e in entries:  # layers in order.
    by_param[e.ours].append(e)
  placed = {ours: _place(es, tensors, targets[ours]) for ours, es in by_param.items()}
  params = jax.tree_util.tree_map_with_path(
      lambda p, _: placed[checkpoint.path_key(p)[:-1]], built.abstract_state.params)
  step = jax.device_put(jnp.zeros((), jnp.int32), built.state_shardings.step)
  # AdamW's state would start at zero: it is made when a run resumes, not written here
  # (it would hold and write twice the params' bytes again).
  state = train_step.TrainState(step=step, params=params, opt_state=None)

  if jax.process_index() == 0:
    source = epath.Path(workdir) / SOURCE_DIR
    source.mkdir(parents=True, exist_ok=True)
    (source / "config.json").write_text(json.dumps(hf_config, indent=2))
    for name, data in tokenizer_files.items():
      (source / name).write_bytes(data)
    _write_run_config(epath.Path(workdir), config)
  ckpt = checkpoint.Checkpointer(str(ckpt_dir), config.checkpoint)
  phase = plan_lib.make(config).of_checkpoint(0)
  meta = dict(step=0, phase=phase.name, qk_norm=phase.qk_norm, tokens_seen=0,
              code_version=checkpoint.code_version(), config=config.to_dict(),
              imported_from=hf_config.get("_name_or_path") or "hf")
  ckpt.save(0, state, None, meta)
  ckpt.wait()
  ckpt.close()
  return config


_CONFIG_PY = '''"""The run config of an imported Hugging Face model (its values: config.json)."""
import json
import pathlib

from drope_jax import config as config_lib


def get_config():
  values = json.loads((pathlib.Path(__file__).parent / "config.json").read_text())
  config = config_lib.base_config(values["model"]["pos_emb"])
  for section, keys in values.items():
    if not isinstance(keys, dict):
      config[section] = keys
      continue
    for key, value in keys.items():
      config[section][key] = tuple(value) if isinstance(value, list) else value
  return config
'''


def _write_run_config(workdir: epath.Path, config):
  """config.json + config.py: `train --config=WORKDIR/config.py` runs this model."""
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
  (workdir / "config.py").write_text(_CONFIG_PY)
