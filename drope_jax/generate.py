"""`python -m drope_jax.generate --workdir=DIR --prompt="..."`: complete a prompt.

  python -m drope_jax.generate --workdir=DIR [--step=N] --prompt="def main(" \
      [--max_new_tokens=128] [--temperature=0.8] [--top_k=40] [--seed=0]
  python -m drope_jax.generate --workdir=DIR --chat [--system="..."] --prompt="Hi!"

Greedy by default (--temperature=0). The checkpoint decides RoPE or NoPE; the prompt
starts as the model's texts do (after an EOS for a native run, as a document does in
training; as its source tokenizer frames text for an imported model). Prints the
prompt and its completion. With --chat, the prompt is the user's turn of a chat
rendered with the imported model's chat template (and a --system message), and the
assistant's answer is printed.
"""


from absl import app
from absl import flags
from absl import logging

from drope_jax import cli
from drope_jax.eval import generate
from drope_jax.eval import loading
from drope_jax.eval import prompting

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue (with --chat: the user's "
                              "message).")
_CHAT = flags.DEFINE_bool("chat", False, "Render the prompt with the model's chat "
                          "template (an imported instruct model's) and answer it.")
_SYSTEM = flags.DEFINE_string("system", None, "With --chat: a system message first.")
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
  if _SYSTEM.value is not None and not _CHAT.value:
    cli.fail("--system is a chat's system message: give --chat too")
  run = loading.load_run(_WORKDIR.value, _STEP.value)
  tokenizer = run.tokenizer()
  prompt = prompting.prompt_tokens(run, _PROMPT.value, chat=_CHAT.value,
                                   system=_SYSTEM.value)
  sampling = generate.Sampling(_MAX_NEW.value, _TEMPERATURE.value, _TOP_K.value)
  (completion,) = generate.complete(
      run.graphdef(), run.params, [prompt], positional=run.positional(),
      sampling=sampling, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
      vocab_limit=tokenizer.vocab_size, seed=_SEED.value)
  answer = tokenizer.decode(completion.tolist())
  print(answer if _CHAT.value else _PROMPT.value + answer, flush=True)


if __name__ == "__main__":
  cli.run(main)
