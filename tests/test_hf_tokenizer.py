"""An imported tokenizer: AutoTokenizer's ids, special tokens from tokenizer_config.json."""

import transformers

from drope_jax.data import tokenizers
from tests import hf_models


def test_ids_equal_autotokenizer_and_special_tokens_come_from_its_config(tmp_path):
  # Llama 3's names, which no built-in list of EOS names holds.
  hf_models.tokenizer(str(tmp_path), bos="<|begin_of_text|>", eos="<|end_of_text|>",
                      pad="<|finetune_right_pad_id|>")
  ours = tokenizers.get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for text in (hf_models.TEXT, "  leading spaces\n\n\ttabs", "x" * 50 + " 東京🙂", ""):
    expected = reference(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text) == expected
    assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=True)
  assert (ours.pad_id, ours.bos_id, ours.eos_id) == (0, 1, 2)
  assert (reference.pad_token_id, reference.bos_token_id, reference.eos_token_id) == (0, 1, 2)
