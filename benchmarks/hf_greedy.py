"""Greedy continuations of an imported real model beside transformers' `generate` on the
same GGUF: plain prompts as the source tokenizer frames them, and one chat turn.

  python -m benchmarks.hf_greedy [--gguf=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
      [--workdir=/tmp/hf_greedy] [--max_new_tokens=16]

Imports the GGUF into --workdir first unless it already holds a run. Prints one line per
prompt with both continuations and whether they agree (drope_jax stops at EOS, which
transformers' decoded text shows as a token).
"""

import os
import subprocess
import sys

from absl import app
from absl import flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_GGUF = flags.DEFINE_string(
    "gguf", os.path.join(_HERE, "..", "..", "shared", "models",
                         "SmolLM2-135M-Instruct.Q4_1.gguf"), "The model file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/hf_greedy", "drope_jax's import of it.")
_TOKENS = flags.DEFINE_integer("max_new_tokens", 16, "Greedy tokens per prompt.")

PROMPTS = ("The old lighthouse keeper climbed the stairs and",
           "In the beginning of the nineteenth century,",
           "The recipe calls for two cups of flour and")
CHAT = "What is the capital of France?"


def _drope_jax(*args: str) -> str:
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(_HERE))
  if result.returncode:
    sys.exit(result.stderr[-2000:])
  return result.stdout


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top  (heavy references, only here)
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  # pylint: enable=g-import-not-at-top
  if not os.path.exists(os.path.join(_WORKDIR.value, "checkpoints")):
    _drope_jax("drope_jax.hf", "import", f"--hf={_GGUF.value}", f"--workdir={_WORKDIR.value}")
  folder, name = os.path.split(os.path.abspath(_GGUF.value))
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

  def reference(ids: list[int]) -> str:
    out = model.generate(torch.tensor([ids]), max_new_tokens=_TOKENS.value, do_sample=False)
    return tokenizer.decode(out[0, len(ids):])

  def ours(prompt: str, *extra: str) -> str:
    return _drope_jax("drope_jax.generate", f"--workdir={_WORKDIR.value}",
                      f"--prompt={prompt}", "--temperature=0",
                      f"--max_new_tokens={_TOKENS.value}", *extra).strip()

  chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": CHAT}],
                                           add_generation_prompt=True, return_dict=True)
  cases = [(p, reference(tokenizer(p)["input_ids"]), ours(p)[len(p):]) for p in PROMPTS]
  cases.append((f"[chat] {CHAT}", reference(chat_ids["input_ids"]), ours(CHAT, "--chat")))
  agree = 0
  for prompt, theirs, mine in cases:
    same = theirs.removesuffix(tokenizer.eos_token or "") == mine
    agree += same
    print(f"{'same' if same else 'DIFFERENT'}  {prompt!r}\n  transformers: {theirs!r}\n"
          f"  drope_jax:    {mine!r}")
  print(f"{agree} of {len(cases)} continuations agree ({_TOKENS.value} greedy tokens each)")


if __name__ == "__main__":
  app.run(main)
