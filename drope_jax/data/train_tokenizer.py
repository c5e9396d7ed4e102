r"""Trains a byte-level BPE tokenizer with Hugging Face `tokenizers`.

  python -m drope_jax.data.train_tokenizer --input='corpus/*.jsonl.gz' \
      --vocab_size=8192 --output=tokenizer.json

Reads the same inputs as `prepare` (only the training split, so held-out
documents stay unseen). The result has the special tokens <pad>, <bos>, <eos>
(ids 0, 1, 2) and is used as `--tokenizer=hf:tokenizer.json`.
"""

import sys
import time

from absl import app
from absl import flags
from etils import epath
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from drope_jax import cli
from drope_jax.data import sources

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

def train(*, input_patterns: str, vocab_size: int, text_field: str = "text",
          eval_fraction: float = 0.05) -> tokenizers.Tokenizer:
  """A byte-level BPE tokenizer trained on the training documents."""
  paths = sources.expand_paths(input_patterns)
  stats = sources.ReadStats()

  def training_texts():
    for path in paths:
      for index, text in enumerate(sources.read_texts(path, text_field, stats)):
        if not sources.in_eval_split(sources.document_key(path, index),
                                     eval_fraction):
          yield text

  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(training_texts(), trainer=trainer)
  if not stats.documents:
    raise sources.InputError(f"no documents in {input_patterns!r}.")
  return tokenizer


def _define_flags() -> None:
  """Only when run as a program (see `prepare._define_flags`)."""
  flags.DEFINE_string(
      "input", None, "Comma-separated globs of .txt/.jsonl/.jsonl.gz/.parquet "
      "files, local or gs://.", required=True)
  flags.DEFINE_string(
      "output", None, "Where to write tokenizer.json (local or gs://).",
      required=True)
  flags.DEFINE_integer(
      "vocab_size", 8192, "Vocabulary size, special tokens included.",
      lower_bound=256 + len(SPECIAL_TOKENS))
  flags.DEFINE_string(
      "text_field", "text", "JSON field / Parquet column holding the text.")
  flags.DEFINE_float(
      "eval_fraction", 0.05, "Documents held out as in `prepare`; not trained "
      "on.", lower_bound=0.0, upper_bound=1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  start = time.monotonic()
  tokenizer = train(input_patterns=f.input, vocab_size=f.vocab_size,
                    text_field=f.text_field, eval_fraction=f.eval_fraction)
  output = epath.Path(f.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(tokenizer.to_str(pretty=True))
  print(f"train_tokenizer: wrote {f.output} ({tokenizer.get_vocab_size()} "
        f"tokens) in {time.monotonic() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
