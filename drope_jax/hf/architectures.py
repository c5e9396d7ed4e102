"""Hugging Face config.json <-> drope_jax `model` keys, for the architectures we run.

All four are the same decoder (pre-norm GQA attention, SwiGLU, RMSNorm, half-split
RoPE); they differ in a few switches:
  LlamaForCausalLM    Llama 2 / 3.x (llama3 RoPE scaling), SmolLM / SmolLM2
  MistralForCausalLM  Llama without biases; refused when its sliding window is active
  Qwen2ForCausalLM    q, k, v biases
  Qwen3ForCausalLM    per-head RMSNorm of q and k (model.qk_norm=head_qk)
"""

import json

from drope_jax.hf.common import HFError

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
             "Qwen3ForCausalLM")
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
# HF rope_type -> model.rope_scaling, and the HF parameters each one reads.
_ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic",
               "yarn": "yarn", "llama3": "llama3"}
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}


# config.json fields the conversion reads: the JSON types each may hold. Required ones
# must be present; the others may be absent or null.
_INT, _NUMBER, _BOOL = (int,), (int, float), (bool,)
_REQUIRED_FIELDS = {"vocab_size": _INT, "hidden_size": _INT, "num_hidden_layers": _INT,
                    "num_attention_heads": _INT, "intermediate_size": _INT,
                    "max_position_embeddings": _INT}
_OPTIONAL_FIELDS = {"num_key_value_heads": _INT, "head_dim": _INT, "rope_theta": _NUMBER,
                    "rms_norm_eps": _NUMBER, "tie_word_embeddings": _BOOL,
                    "attention_bias": _BOOL, "mlp_bias": _BOOL, "hidden_act": (str,),
                    "sliding_window": _INT, "use_sliding_window": _BOOL,
                    "rope_scaling": (dict,), "rope_parameters": (dict,)}
_TYPE_NAMES = {_INT: "an integer", _NUMBER: "a number", _BOOL: "true or false",
               (str,): "a string", (dict,): "an object"}


def _fail(message: str):
  raise HFError(message)


def _field_problem(hf_config: dict, name: str, types: tuple, required: bool) -> str | None:
  if hf_config.get(name) is None:
    return f'"{name}" is missing' if required else None
  value = hf_config[name]
  # JSON true is a Python bool, itself an int: a flag is no size.
  if isinstance(value, bool) != (types == _BOOL) or not isinstance(value, types):
    return f'"{name}": {json.dumps(value)} is not {_TYPE_NAMES[types]}'
  if types == _INT and name in _REQUIRED_FIELDS and value <= 0:
    return f'"{name}": {value} is not positive'
  return None


def check_fields(hf_config: dict):
  """Every field the conversion reads is present (where required) and of its type;
  one HFError names each problem."""
  problems = [p for fields, required in ((_REQUIRED_FIELDS, True),
                                         (_OPTIONAL_FIELDS, False))
              for name, types in fields.items()
              if (p := _field_problem(hf_config, name, types, required))]
  if problems:
    _fail(f"config.json: {'; '.join(problems)}: fix these fields (a Hugging Face "
          "config.json of the model's architecture has them all)")


def rope_parameters(hf_config: dict) -> dict:
  """The RoPE settings as transformers 5 names them, from a v4 or v5 config.json."""
  params = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
  if "type" in params and "rope_type" not in params:
    params["rope_type"] = params.pop("type")
  params.setdefault("rope_type", "default")
  params.setdefault("rope_theta", hf_config.get("rope_theta", 10_000.0))
  return params


def architecture(hf_config: dict) -> str:
  names = hf_config.get("architectures") or []
  if len(names) != 1 or names[0] not in SUPPORTED:
    _fail(f"architecture {names or 'unknown'} is not supported: import one of "
          f"{', '.join(SUPPORTED)}")
  return names[0]


def to_model_keys(hf_config: dict) -> tuple[dict, int]:
  """(model.* overrides, the model's original context length) of an HF config.

  Raises HFError for settings this framework does not run.
  """
  arch = architecture(hf_config)
  check_fields(hf_config)
  c = hf_config
  if c.get("hidden_act", "silu") != "silu":
    _fail(f"hidden_act={c['hidden_act']!r}: only SwiGLU (silu) MLPs are supported")
  if c.get("mlp_bias"):
    _fail("mlp_bias=true: MLP biases are not supported")
  context = int(c["max_position_embeddings"])
  window = c.get("sliding_window")
  uses_window = c.get("use_sliding_window", arch == "MistralForCausalLM")
  if uses_window and window is not None and window < context:
    _fail(f"{arch} with sliding_window={window} < max_position_embeddings={context}: "
          "sliding-window attention is not supported (a model with sliding_window null, "
          "or >= its context, imports)")
  bias = bool(c.get("attention_bias", False))
  if bias and arch != "Qwen2ForCausalLM":
    _fail(f"{arch} with attention_bias=true (an output-projection bias) is not supported")
  n_heads = int(c["num_attention_heads"])
  rope = rope_parameters(c)
  rope_type = rope["rope_type"]
  if rope_type not in _ROPE_TYPES:
    _fail(f"rope_type {rope_type!r} is not supported: use one of "
          f"{', '.join(_ROPE_TYPES)}")
  if rope_type == "yarn" and any(
      rope.get(k, v) != v for k, v in _YARN_DEFAULTS.items()) or any(
          k in rope for k in ("attention_factor", "mscale", "mscale_all_dim")):
    _fail(f"yarn RoPE with non-default parameters {rope} is not supported")
  keys = dict(
      vocab_size=int(c["vocab_size"]),
      d_model=int(c["hidden_size"]),
      n_layers=int(c["num_hidden_layers"]),
      n_heads=n_heads,
      n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
      head_dim=int(c.get("head_dim") or c["hidden_size"] // n_heads),
      d_ff=int(c["intermediate_size"]),
      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
      norm_eps=float(c.get("rms_norm_eps", 1e-6)),
      pos_emb="rope",
      rope_theta=float(rope["rope_theta"]),
      rope_scaling=_ROPE_TYPES[rope_type],
      qk_norm="head_qk" if arch == "Qwen3ForCausalLM" else "none",
      attention_bias=arch == "Qwen2ForCausalLM",
  )
  if rope_type != "default":
    original = int(rope.get("original_max_position_embeddings", context))
    keys.update(rope_scaling_factor=float(rope.get("factor", 1.0)),
                rope_original_max_len=original)
    if rope_type == "llama3":
      keys.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                  rope_high_freq_factor=float(rope["high_freq_factor"]))
    if rope_type in ("llama3", "yarn"):
      context = original  # the context the model was pretrained at.
  return keys, context


def default_architecture(model) -> str:
  """The HF architecture whose switches match a run's model keys."""
  if model.get("attention_bias"):
    return "Qwen2ForCausalLM"
  if model.qk_norm == "head_qk":
    return "Qwen3ForCausalLM"
  return "LlamaForCausalLM"


def to_hf_config(model, arch: str, context: int, base: dict | None = None) -> dict:
  """config.json of a RoPE run's model as `arch`, keeping `base`'s other keys."""
  c = dict(base or {})
  c.update(
      architectures=[arch], model_type=_MODEL_TYPES[arch],
      vocab_size=model.vocab_size, hidden_size=model.d_model,
      num_hidden_layers=model.n_layers, num_attention_heads=model.n_heads,
      num_key_value_heads=model.n_kv_heads, head_dim=model.head_dim,
      intermediate_size=model.d_ff, tie_word_embeddings=bool(model.tie_embeddings),
      rms_norm_eps=model.norm_eps, hidden_act="silu",
      max_position_embeddings=max(int(c.get("max_position_embeddings", 0)), context))
  if arch != "Qwen2ForCausalLM":  # Qwen2's biases are implied by the architecture.
    c["attention_bias"] = False
  scaling = model.get("rope_scaling", "none")
  rope = {"rope_type": {v: k for k, v in _ROPE_TYPES.items()}[scaling],
          "rope_theta": model.rope_theta}
  if scaling != "none":
    rope.update(factor=model.rope_scaling_factor,
                original_max_position_embeddings=model.rope_original_max_len)
  if scaling == "llama3":
    rope.update(low_freq_factor=model.rope_low_freq_factor,
                high_freq_factor=model.rope_high_freq_factor)
  c.pop("rope_scaling", None)
  c.pop("rope_theta", None)
  c["rope_parameters"] = rope
  return c
