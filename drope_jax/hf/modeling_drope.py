"""NoPE (DroPE-recalibrated) Llama / Qwen2 / Qwen3 models for transformers.

Shipped inside exports of drope_jax NoPE models and registered through `auto_map`:

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

The models are transformers' own, with each attention layer replaced by one that
skips the rotary embedding and adds what drope_jax's NoPE attention has (config.json):
  drope_qk_norm        none | q | k | qk: RMSNorm over the whole projection (all heads,
                       gain [H*D]); head_qk: Qwen3's per-head norm (gain [head_dim]).
  drope_qkv_bias       q, k, v projection biases (Qwen2).
  drope_temperature_c  c of the softmax temperature beta = 1 + c ln(L / drope_train_len)
                       for L (keys attended, cache included) > drope_train_len; 0: none.
This file imports only torch and transformers.
"""

import math

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3


class NoPEAttention(nn.Module):
  """Grouped-query attention without positions, with optional QK-norm and temperature."""

  def __init__(self, config, layer_idx: int):
    super().__init__()
    self.config = config
    self.layer_idx = layer_idx
    self.head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads)
    self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
    self.attention_dropout = 0.0
    self.is_causal = True
    q_width = config.num_attention_heads * self.head_dim
    kv_width = config.num_key_value_heads * self.head_dim
    bias = bool(getattr(config, "drope_qkv_bias", False))
    self.q_proj = nn.Linear(config.hidden_size, q_width, bias=bias)
    self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=bias)
    self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=bias)
    self.o_proj = nn.Linear(q_width, config.hidden_size, bias=False)
    qk_norm = getattr(config, "drope_qk_norm", "none")
    self.per_head_norm = qk_norm == "head_qk"
    norm = lambda width: modeling_llama.LlamaRMSNorm(
        self.head_dim if self.per_head_norm else width, eps=config.rms_norm_eps)
    self.q_norm = norm(q_width) if "q" in qk_norm else None
    self.k_norm = norm(kv_width) if "k" in qk_norm else None
    self.c = float(getattr(config, "drope_temperature_c", 0.0) or 0.0)
    self.train_len = int(getattr(config, "drope_train_len", 0) or 0)

  def _project(self, proj, norm, hidden_states, hidden_shape):
    x = proj(hidden_states)
    if norm is not None and not self.per_head_norm:
      x = norm(x)
    x = x.view(hidden_shape)
    if norm is not None and self.per_head_norm:
      x = norm(x)
    return x.transpose(1, 2)

  def forward(self, hidden_states, position_embeddings=None, attention_mask=None,
              past_key_values=None, **kwargs):
    del position_embeddings  # NoPE: no rotation.
    hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    query = self._project(self.q_proj, self.q_norm, hidden_states, hidden_shape)
    key = self._project(self.k_proj, self.k_norm, hidden_states, hidden_shape)
    value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    if past_key_values is not None:
      key, value = past_key_values.update(key, value, self.layer_idx)
    length = key.shape[-2]
    beta = 1.0
    if self.c and self.train_len and length > self.train_len:
      beta = 1.0 + self.c * math.log(length / self.train_len)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_llama.eager_attention_forward)
    out, weights = attention(self, query, key, value, attention_mask, dropout=0.0,
                             scaling=beta / math.sqrt(self.head_dim), **kwargs)
    out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
    return self.o_proj(out), weights


def _without_rope(base):
  class NoPEForCausalLM(base):

    def __init__(self, config):
      super().__init__(config)
      for i, layer in enumerate(self.model.layers):
        layer.self_attn = NoPEAttention(config, i)
      self.post_init()

  NoPEForCausalLM.__name__ = NoPEForCausalLM.__qualname__ = "Drope" + base.__name__
  return NoPEForCausalLM


DropeLlamaForCausalLM = _without_rope(modeling_llama.LlamaForCausalLM)
DropeQwen2ForCausalLM = _without_rope(modeling_qwen2.Qwen2ForCausalLM)
DropeQwen3ForCausalLM = _without_rope(modeling_qwen3.Qwen3ForCausalLM)
