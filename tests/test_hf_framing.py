"""An imported model is prompted as its source frames text; a native run after an EOS.

Two small random sources: a Llama whose tokenizer starts every text with BOS (and a
chat template with a system turn, Llama 2's shape) and a Qwen2 whose tokenizer adds
nothing (a ChatML template, SmolLM2's). Plain and chat prompts give transformers'
tokens and greedy continuations; NIAH prompts and perplexity windows start as
transformers' tokenizer starts the same text.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from drope_jax import checkpoint
from drope_jax import optim
from drope_jax import train_step
from drope_jax.data import framing
from drope_jax.data import needles
from drope_jax.eval import generate
from drope_jax.eval import heldout
from drope_jax.eval import loading
from drope_jax.eval import needle_attention
from drope_jax.eval import niah_runner
from drope_jax.eval import prompting
from tests import helpers
from tests import hf_models
from tests.test_hf_import import import_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}\n"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] }}<</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]\n"
    "{% else %}{{ raise_exception('only system and user turns') }}{% endif %}\n"
    "{% endfor %}")
CHATML = (  # SmolLM2-Instruct's, shortened: a default system turn when none is given.
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SOURCES = {"llama": dict(add_bos=True, chat_template=LLAMA_CHAT),
           "qwen2": dict(add_bos=False, chat_template=CHATML)}
PROMPT = "def main(argv): return"
NEW_TOKENS = 12
HAYSTACK = " ".join(
    f"The {a} {n} walked to the {m} and sat there quietly." for a, n, m in zip(
        needles.ADJECTIVES * 3, needles.NOUNS * 3, needles.NOUNS[::-1] * 3))

_SOURCES = {}


def source(name, tmp_path_factory):
  """(transformers model, its tokenizer, our imported run, the run's workdir)."""
  if name not in _SOURCES:
    directory = str(tmp_path_factory.mktemp(name))
    model = hf_models.hf_model(name)
    model.save_pretrained(directory)
    hf_models.tokenizer(directory, **SOURCES[name])
    workdir = str(tmp_path_factory.mktemp(name + "_run"))
    import_dir(directory, workdir)
    # The class tokenizer.json describes (AutoTokenizer would rebuild a Qwen2 tokenizer
    # with its own split pattern, which this small tokenizer does not use).
    _SOURCES[name] = (model, transformers.PreTrainedTokenizerFast.from_pretrained(directory),
                      loading.load_run(workdir), workdir)
  return _SOURCES[name]


def hf_prompt(hf_tokenizer, chat, system=None):
  if not chat:
    return hf_tokenizer(PROMPT).input_ids
  messages = [{"role": "user", "content": PROMPT}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  return hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                          tokenize=True, return_dict=False)


def test_import_records_the_source_framing(tmp_path_factory):
  assert source("llama", tmp_path_factory)[2].framing == "bos"
  assert source("qwen2", tmp_path_factory)[2].framing == "none"


CASES = [("llama", False, None), ("llama", True, "Be brief."), ("qwen2", False, None),
         ("qwen2", True, None)]


@pytest.mark.parametrize("name,chat,system", CASES,
                         ids=["llama", "llama-chat", "qwen2", "qwen2-chat"])
def test_greedy_generation_equals_transformers(name, chat, system, tmp_path_factory):
  hf_model, hf_tokenizer, run, _ = source(name, tmp_path_factory)
  prompt = prompting.prompt_tokens(run, PROMPT, chat=chat, system=system)
  expected_prompt = hf_prompt(hf_tokenizer, chat, system)
  assert prompt.tolist() == expected_prompt
  assert (prompt[0] == 1) == (name == "llama")  # BOS (id 1) first for Llama only.
  with torch.no_grad():
    expected = hf_model.generate(
        torch.as_tensor([expected_prompt]), max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
        pad_token_id=0)[0, len(expected_prompt):].numpy()
  (ours,) = generate.complete(
      run.graphdef(), run.params, [prompt], positional=run.positional(),
      sampling=generate.Sampling(max_new_tokens=NEW_TOKENS), eos_id=-1, pad_id=-2)
  np.testing.assert_array_equal(ours, expected)


def _python(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_generate_cli_chat_answers_as_transformers_does(tmp_path_factory):
  hf_model, hf_tokenizer, _, workdir = source("llama", tmp_path_factory)
  expected_prompt = hf_prompt(hf_tokenizer, chat=True, system="Be brief.")
  with torch.no_grad():
    expected = hf_model.generate(torch.as_tensor([expected_prompt]), max_new_tokens=8,
                                 do_sample=False, pad_token_id=0)
  answer = hf_tokenizer.decode(expected[0, len(expected_prompt):],
                               skip_special_tokens=True)
  done = _python("drope_jax.generate", f"--workdir={workdir}", f"--prompt={PROMPT}",
                 "--chat", "--system=Be brief.", "--max_new_tokens=8")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout == answer + "\n"


def test_niah_prompts_start_as_the_source_frames_text(tmp_path_factory):
  for name in SOURCES:
    _, hf_tokenizer, run, _ = source(name, tmp_path_factory)
    tokenizer = run.tokenizer()
    examples, prompts = niah_runner.make_prompts(
        tokenizer, needles.Haystack(HAYSTACK), length=600, variants=["single"],
        depths=[0.5], trials=1, seed=0, framing=run.framing,
        answer_budget=needles.answer_budget(tokenizer, ["single"]), progress=print)
    (example,), (prompt,) = examples, prompts
    assert prompt.tolist() == hf_tokenizer(example.prompt).input_ids, name
    (a, b), _ = needle_attention.needle_spans(tokenizer, example, run.framing)
    assert tokenizer.decode(prompt[a:b]) == example.answers[0], name


def test_perplexity_windows_start_as_the_source_frames_text(tmp_path_factory):
  text = hf_models.TEXT * 4
  for name in SOURCES:
    _, hf_tokenizer, run, _ = source(name, tmp_path_factory)
    tokenizer = run.tokenizer()
    stream = tokenizer.encode_array(text)
    prefix = framing.window_prefix(run.framing, tokenizer)
    windows = heldout.windows(stream, 24, 99, prefix)
    assert windows[0].tolist() == hf_tokenizer(text).input_ids[:25], name
    # Every token of the stream is still a target exactly once.
    targets = windows[:, 1:].reshape(-1)
    start = 1 - len(prefix)
    np.testing.assert_array_equal(targets, stream[start:start + len(targets)])


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
  """A native run's step-0 checkpoint (byte tokenizer), as training writes it."""
  workdir = tmp_path_factory.mktemp("native")
  config = helpers.tiny_config("rope", vocab_size=264)
  config.train.seq_len = 64
  _, init = train_step.build(config, helpers.mesh(), optim.make_optimizer(config.train))
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), config.checkpoint)
  ckpt.save(0, init(), None, dict(step=0, phase="pretrain", tokens_seen=0,
                                  config=config.to_dict()))
  ckpt.wait()
  ckpt.close()
  return str(workdir)


def test_a_native_run_still_prompts_after_eos(native_run):
  run = loading.load_run(native_run)
  tokenizer = run.tokenizer()
  assert run.framing == "eos"
  assert prompting.prompt_tokens(run, "hi").tolist() == [tokenizer.eos_id, 104, 105]
  assert framing.window_prefix(run.framing, tokenizer) == []


def test_chat_on_a_run_without_a_template_is_one_error_line(native_run):
  done = _python("drope_jax.generate", f"--workdir={native_run}", "--prompt=hi", "--chat")
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --chat: ")
  assert "no chat template" in lines[0] and "drop --chat" in lines[0]
