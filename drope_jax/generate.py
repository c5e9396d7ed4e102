"""`python -m drope_jax.generate --workdir=DIR --prompt="..."`: complete a prompt.

  python -m drope_jax.generate --workdir=DIR [--step=N] --prompt="def main(" \
      [--max_new_tokens=128] [--temperature=0.8] [--top_k=40] [--seed=0]

Greedy by default (--temperature=0). The checkpoint decides RoPE or NoPE; the prompt
starts after an EOS, as a document does in training. Prints the completion.
"""


from absl import app
from absl import flags
from absl import logging
import numpy as np

from drope_jax import cli
from drope_jax.eval import generate
from drope_jax.eval import loading

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0: greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest; 0: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv):
  logging.set_verbosity(logging.ERROR)  # orbax is chatty.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _MAX_NEW.value < 1 or _TEMPERATURE.value < 0 or _TOP_K.value < 0:
    cli.fail("--max_new_tokens must be >= 1, --temperature and --top_k >= 0")
  run = loading.load_run(_WORKDIR.value, _STEP.value)
  tokenizer = run.tokenizer()
  prompt = np.concatenate([[tokenizer.eos_id], tokenizer.encode_array(_PROMPT.value)])
  sampling = generate.Sampling(_MAX_NEW.value, _TEMPERATURE.value, _TOP_K.value)
  (completion,) = generate.complete(
      run.graphdef(), run.params, [prompt.astype(np.int32)], positional=run.positional(),
      sampling=sampling, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
      vocab_limit=tokenizer.vocab_size, seed=_SEED.value)
  print(_PROMPT.value + tokenizer.decode(completion.tolist()), flush=True)


if __name__ == "__main__":
  cli.run(main)
