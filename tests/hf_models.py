"""Tiny random Hugging Face models and tokenizers for the tests/test_hf_*.py files."""

import json
import os

import torch
import transformers

VOCAB = 320
CONTEXT = 32
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               max_position_embeddings=CONTEXT, rms_norm_eps=1e-6,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, dict(rope_theta=10_000.0)),
    "llama3": (transformers.LlamaConfig, dict(
        max_position_embeddings=4 * CONTEXT, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=CONTEXT),
        rope_theta=500.0)),
    "linear": (transformers.LlamaConfig, dict(
        rope_scaling=dict(rope_type="linear", factor=2.0), rope_theta=1000.0)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1e6)),
    "qwen3": (transformers.Qwen3Config, dict(rope_theta=1e6)),
}
TEXT = ("def main(argv):\n    return  sum(x ** 2 for x in range(10))  # quadrat\n"
        "Grüße, 東京! Ünïcödé   whitespace\t\truns\n\n\n and émojis 🙂🙂 end. ")


def hf_model(name: str, seed: int = 0, **overrides):
  """A random float32 model whose every weight (norm gains too) is far from init."""
  config_cls, extra = ARCHITECTURES[name]
  config = config_cls(**{**_COMMON, **extra, **overrides})
  config.architectures = [config_cls.__name__.replace("Config", "ForCausalLM")]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      config, attn_implementation="eager", dtype=torch.float32)
  with torch.no_grad():
    for tensor_name, p in model.named_parameters():
      if "norm" in tensor_name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return model.eval()


def tokenizer(directory: str, bos="<s>", eos="</s>", pad="<pad>", *, add_bos=False,
              chat_template=None):
  """A byte-level BPE tokenizer (ids 0, 1, 2: pad, bos, eos) saved into `directory`.

  add_bos: it starts every text with BOS, as Llama's does (a post-processor in
  tokenizer.json and add_bos_token in tokenizer_config.json).
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=VOCAB - 20, special_tokens=[pad, bos, eos],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator([TEXT * 3], trainer)
  if add_bos:
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
      chat_template=chat_template)
  fast.save_pretrained(directory)
  if add_bos:  # transformers 5 does not save the flag; Llama's own files carry it.
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path) as f:
      config = json.load(f)
    with open(path, "w") as f:
      json.dump(dict(config, add_bos_token=True), f)
  return fast


def save(name: str, directory: str, seed: int = 0, **overrides):
  """A random model `name` and the tokenizer, saved as a Hugging Face directory."""
  model = hf_model(name, seed, **overrides)
  model.save_pretrained(directory)
  tokenizer(directory)
  assert os.path.exists(os.path.join(directory, "model.safetensors"))
  return model
