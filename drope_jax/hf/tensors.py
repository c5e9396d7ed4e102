"""Our parameter paths <-> Hugging Face tensor names and layouts.

HF linear weights are [out, in]; ours are [in, out] with the heads split out:
  q_proj.weight [H*D, E]  <->  q_EHD [E, H, D]      (k, v: [K*D, E] <-> [E, K, D])
  o_proj.weight [E, H*D]  <->  out_HDE [H, D, E]
  gate/up_proj  [F, E]    <->  gate_EF / up_EF;  down_proj [E, F] <-> down_FE
  q/k/v_proj.bias [H*D]   <->  q_bias_HD [H, D]
  q_norm.weight [D] (Qwen3, per head) <-> q_norm.scale [D];
  q_norm.weight [H*D] (our whole-projection QK-norm, exported models) <-> [H, D].
Every map is a reshape and/or a transpose, so round trips are bitwise. Our layers are
stacked ([L, ...] under `blocks`): HF's layer i is index i of that leading axis.
"""

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Entry:
  ours: tuple[str, ...]    # the parameter's path in the model state.
  hf: str                  # the HF tensor name.
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  layer: int | None = None  # index into the stacked layer axis of `ours`, if under it.


def _matrix(ours, hf, shape_ours):
  """An HF [out, in] weight whose transpose reshapes to our `shape_ours`."""
  in_dim = shape_ours[0]
  return Entry(ours, hf, (int(np.prod(shape_ours[1:])), in_dim),
               lambda w: w.T.reshape(shape_ours), lambda w: w.reshape(in_dim, -1).T)


def _output(ours, hf, shape_ours):
  """o_proj [E, H*D] <-> out_HDE [H, D, E]."""
  out_dim = shape_ours[-1]
  return Entry(ours, hf, (out_dim, int(np.prod(shape_ours[:-1]))),
               lambda w: w.T.reshape(shape_ours), lambda w: w.reshape(-1, out_dim).T)


def _vector(ours, hf, shape_ours):
  return Entry(ours, hf, (int(np.prod(shape_ours)),),
               lambda w: w.reshape(shape_ours), lambda w: w.reshape(-1))


def entries(model) -> list[Entry]:
  """Every parameter of `model` (the `model` config section) with its HF name."""
  e, h, k, d, f = model.d_model, model.n_heads, model.n_kv_heads, model.head_dim, model.d_ff
  same = lambda ours, hf, shape: Entry(ours, hf, shape, lambda w: w, lambda w: w)
  out = [same(("embed", "table_VE"), "model.embed_tokens.weight", (model.vocab_size, e))]
  per_head = model.qk_norm == "head_qk"
  for i in range(model.n_layers):
    ours, hf = ("blocks",), f"model.layers.{i}."
    attn = (*ours, "attn")
    layer = [
        _matrix((*attn, "q_EHD"), hf + "self_attn.q_proj.weight", (e, h, d)),
        _matrix((*attn, "k_EKD"), hf + "self_attn.k_proj.weight", (e, k, d)),
        _matrix((*attn, "v_EKD"), hf + "self_attn.v_proj.weight", (e, k, d)),
        _output((*attn, "out_HDE"), hf + "self_attn.o_proj.weight", (h, d, e)),
    ]
    if model.get("attention_bias"):
      layer += [_vector((*attn, "q_bias_HD"), hf + "self_attn.q_proj.bias", (h, d)),
                _vector((*attn, "k_bias_KD"), hf + "self_attn.k_proj.bias", (k, d)),
                _vector((*attn, "v_bias_KD"), hf + "self_attn.v_proj.bias", (k, d))]
    if "q" in model.qk_norm:
      layer.append(_vector((*attn, "q_norm", "scale"), hf + "self_attn.q_norm.weight",
                           (d,) if per_head else (h, d)))
    if "k" in model.qk_norm:
      layer.append(_vector((*attn, "k_norm", "scale"), hf + "self_attn.k_norm.weight",
                           (d,) if per_head else (k, d)))
    layer += [
        same((*ours, "attn_norm", "scale"), hf + "input_layernorm.weight", (e,)),
        same((*ours, "mlp_norm", "scale"), hf + "post_attention_layernorm.weight", (e,)),
        _matrix((*ours, "mlp", "gate_EF"), hf + "mlp.gate_proj.weight", (e, f)),
        _matrix((*ours, "mlp", "up_EF"), hf + "mlp.up_proj.weight", (e, f)),
        _matrix((*ours, "mlp", "down_FE"), hf + "mlp.down_proj.weight", (f, e)),
    ]
    out += [dataclasses.replace(entry, layer=i) for entry in layer]
  out.append(same(("final_norm", "scale"), "model.norm.weight", (e,)))
  if not model.tie_embeddings:
    out.append(_matrix(("unembed_EV",), "lm_head.weight", (e, model.vocab_size)))
  return out
