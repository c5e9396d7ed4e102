"""Parameter counts, model FLOPs per training token, accelerator peaks and MFU.

The model is the Llama / Qwen2-style decoder of `drope_jax.model`: token embedding,
then per layer RMSNorm + GQA attention (optional q / k RMSNorm gains) and RMSNorm +
SwiGLU MLP, a final RMSNorm, and an unembedding unless it is tied; q, k, v biases
when model.attention_bias (Qwen2).
"""

import jax
import jax.numpy as jnp

_QK_NORM_WIDTHS = {"none": (), "q": ("q",), "k": ("k",), "qk": ("q", "k"),
                   "head_qk": ("head_q", "head_k")}


def _layer_matmul_params(m) -> int:
  """Weights of one layer's matmuls: wq, wk, wv, wo and w_gate, w_up, w_down."""
  q_width = m.n_heads * m.head_dim
  kv_width = m.n_kv_heads * m.head_dim
  attention = m.d_model * (2 * q_width + 2 * kv_width)
  mlp = 3 * m.d_model * m.d_ff
  return attention + mlp


def _layer_norm_params(m) -> int:
  """Gains of one layer's RMSNorms (attention, MLP, optional q / k norms) and biases."""
  if m.qk_norm not in _QK_NORM_WIDTHS:
    raise ValueError(f"model.qk_norm={m.qk_norm!r}: use one of {', '.join(_QK_NORM_WIDTHS)}")
  widths = {"q": m.n_heads * m.head_dim, "k": m.n_kv_heads * m.head_dim,
            "head_q": m.head_dim, "head_k": m.head_dim}
  biases = (m.n_heads + 2 * m.n_kv_heads) * m.head_dim if m.get("attention_bias") else 0
  return (2 * m.d_model + sum(widths[name] for name in _QK_NORM_WIDTHS[m.qk_norm])
          + biases)


def params_count(model_config) -> dict[str, int]:
  """Counts parameters: `embedding` (embed and, if untied, unembed), `non_embedding`, `total`."""
  m = model_config
  embedding = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
  per_layer = _layer_matmul_params(m) + _layer_norm_params(m)
  non_embedding = m.n_layers * per_layer + m.d_model  # + final RMSNorm.
  return dict(embedding=embedding, non_embedding=non_embedding,
              total=embedding + non_embedding)


def training_flops_per_token(model_config, seq_len: int) -> float:
  """Model FLOPs of one training token (forward + backward), counted as MaxText does.

  MaxText's `calculate_tflops_training_per_device`, per token:
    6 * (n_layers * layer matmul params + d_model * vocab)   weights: 2 forward, 4 backward
    + 6 * n_layers * seq_len * n_heads * head_dim             causal attention
  The attention term is QK^T and AV, 2 * 2 * seq_len * n_heads * head_dim forward FLOPs
  per token and layer, halved because the causal mask leaves half the score matrix,
  times 3 for forward + backward (i.e. 12 * n_layers * seq_len * n_heads * head_dim / 2).
  The logits matmul counts once whether or not embeddings are tied; the embedding lookup,
  norms, softmax and the optimizer are not counted. Rematerialisation is not counted
  either: this is model FLOPs (MFU), not hardware FLOPs (HFU).
  """
  m = model_config
  matmul_params = m.n_layers * _layer_matmul_params(m) + m.d_model * m.vocab_size
  attention = 6 * m.n_layers * seq_len * m.n_heads * m.head_dim
  return float(6 * matmul_params + attention)


# Dense (no sparsity) peak FLOP/s of one chip, by compute dtype. Sources: Google Cloud
# TPU system architecture pages and NVIDIA's A100 / H100 / H200 datasheets (SXM parts).
# float32: TPUs run f32 matmuls on the MXU in bfloat16 passes at XLA's default precision,
# so the bfloat16 peak is the ceiling; NVIDIA GPUs run them as TF32 on tensor cores at
# that precision, so float32 is the dense TF32 peak.
# cpu: this project's 2-core development machine, measured (2048x2048 f32 jitted matmul);
# a reference for CPU runs, not a vendor figure.
PEAK_FLOPS = {
    "tpu_v4": {"bfloat16": 275e12, "float32": 275e12},
    "tpu_v5e": {"bfloat16": 197e12, "float32": 197e12},
    "tpu_v5p": {"bfloat16": 459e12, "float32": 459e12},
    "tpu_v6e": {"bfloat16": 918e12, "float32": 918e12},
    "a100": {"bfloat16": 312e12, "float32": 156e12},
    "h100": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "h200": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "cpu": {"float32": 180e9},
}

# jax `device.device_kind` strings; libtpu has reported both spellings of each TPU.
_TPU_KINDS = {
    "tpu v4": "tpu_v4",
    "tpu v5 lite": "tpu_v5e", "tpu v5e": "tpu_v5e",
    "tpu v5": "tpu_v5p", "tpu v5p": "tpu_v5p",
    "tpu v6 lite": "tpu_v6e", "tpu v6e": "tpu_v6e",
    "cpu": "cpu",
}
# GPU kinds read like "NVIDIA H100 80GB HBM3" or "NVIDIA A100-SXM4-40GB". PCIe and NVL
# Hopper parts have lower peaks than the SXM figures above, so they are left unknown.
_GPU_MODELS = ("a100", "h100", "h200")
_LOWER_PEAK_VARIANTS = ("pcie", "nvl")


def chip_name(device_kind: str) -> str | None:
  """The PEAK_FLOPS key for a jax device_kind string, or None if not in the table."""
  kind = device_kind.strip().lower()
  if kind in _TPU_KINDS:
    return _TPU_KINDS[kind]
  for model in _GPU_MODELS:
    if model in kind:
      hopper_variant = model != "a100" and any(v in kind for v in _LOWER_PEAK_VARIANTS)
      return None if hopper_variant else model
  return None


def peak_flops_per_device(device=None, dtype="bfloat16") -> float | None:
  """Dense peak FLOP/s of `device` (a jax Device or its device_kind; default the first
  local device) at compute `dtype`, or None when the chip or dtype is not in the table."""
  if device is None:
    device = jax.local_devices()[0]
  kind = device if isinstance(device, str) else device.device_kind
  chip = chip_name(kind)
  if chip is None:
    return None
  return PEAK_FLOPS[chip].get(jnp.dtype(dtype).name)


def mfu(tokens_per_sec_per_device: float, flops_per_token: float,
        peak: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
  if not peak:
    return None
  return tokens_per_sec_per_device * flops_per_token / peak
