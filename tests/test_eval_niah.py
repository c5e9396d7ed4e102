"""A model trained to copy from context retrieves needles with greedy cached decoding.

The NIAH machinery (prefill, decode, exact-match scoring) is only worth trusting if a
model that can retrieve actually scores. A tiny 2-layer RoPE model is trained on
repeated random strings (which grows induction heads within ~100 steps) mixed with
needle prompts: answer "?key:" with the 7-digit value that followed "key:" earlier
in a haystack of random letters. Chance is about 1e-7 per needle.
"""

import numpy as np
import optax

from drope_jax import optim
from drope_jax import train_step
from drope_jax.eval import generate
from drope_jax.eval import niah
from drope_jax.eval import niah_runner
from drope_jax.model.positional import Positional
from tests import helpers

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz :?."
EOS, PAD = 62, 63
SEQ = 128
ROPE = Positional("rope", theta=10_000.0)


def encode(text):
  return np.array([CHARS.index(c) for c in text], np.int32)


def decode(ids):
  return "".join(CHARS[i] for i in ids if i < len(CHARS))


def example(rng):
  """(prompt, answer): a needle 'key:value.' hidden in letters, then '?key:'."""
  key = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 2))
  value = "".join(rng.choice(list("123456789"), 7, replace=False))
  filler = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz     "), SEQ))
  needle = f" {key}:{value}. "
  question = f" ?{key}:"
  room = SEQ - len(needle) - len(question) - len(value) - 2
  cut = int(rng.integers(0, room))
  prompt = filler[:cut] + needle + filler[cut:room] + question
  return encode(prompt), value


def training_batch(rng, batch_size):
  """Half repeated random strings (loss on the repeat), half needles (loss on the
  answer)."""
  repeats = batch_size // 2
  half = SEQ // 2
  first = rng.integers(0, len(CHARS), (repeats, half + 1))
  rows = list(np.concatenate([first, first], 1)[:, :SEQ + 1])
  weights = [np.arange(SEQ, dtype=np.float32) >= half] * repeats
  for _ in range(batch_size - repeats):
    prompt, value = example(rng)
    tokens = np.concatenate([prompt, encode(value + "."), [EOS]])
    tokens = np.pad(tokens, (0, SEQ + 1 - len(tokens)), constant_values=PAD)
    weight = np.zeros(SEQ, np.float32)
    weight[len(prompt) - 1:len(prompt) + len(value)] = 1.0
    rows.append(tokens)
    weights.append(weight)
  rows = np.stack(rows)
  return dict(inputs=rows[:, :-1].astype(np.int32), targets=rows[:, 1:].astype(np.int32),
              positions=np.broadcast_to(np.arange(SEQ), (batch_size, SEQ)),
              segment_ids=np.ones((batch_size, SEQ), np.int32),
              weights=np.stack(weights).astype(np.float32))


def test_a_trained_copying_model_retrieves_needles_far_above_chance():
  config = helpers.tiny_config("rope", d_model=64, n_heads=4, n_kv_heads=2, head_dim=16,
                               d_ff=128)
  config.train.update(dict(steps=200, batch_size=16, seq_len=SEQ, lr=3e-3,
                           warmup_steps=20, weight_decay=0.0))
  tx = optim.make_optimizer(config.train)
  built, init = train_step.build(config, helpers.mesh(), tx)
  step_fn = train_step.make_train_step(config, built, optim.lr_schedule(config), ROPE)
  state, rng = init(), np.random.default_rng(0)
  for _ in range(config.train.steps):
    state, metrics = step_fn(state, training_batch(rng, config.train.batch_size))
  assert float(metrics["loss"]) < 0.5

  test_rng = np.random.default_rng(123)
  prompts, values = zip(*(example(test_rng) for _ in range(32)))
  completions = generate.complete(
      built.graphdef, state.params, list(prompts), positional=ROPE,
      sampling=generate.Sampling(max_new_tokens=9), eos_id=EOS, pad_id=PAD,
      batch_size=16, vocab_limit=len(CHARS), width=SEQ)
  scores = [niah.score(decode(c), [v]) for c, v in zip(completions, values)]
  assert np.mean(scores) >= 0.6, [decode(c) for c in completions]


def test_answer_budget_covers_every_asked_number():
  class Bytes:
    def encode(self, text):
      return list(text.encode())
  assert niah_runner.answer_tokens(Bytes(), ["single"]) >= len(" 1234567.")
  assert niah_runner.answer_tokens(Bytes(), ["single", "multivalue"]) >= len(
      " 1234567, 2345678, 3456789 and 4567890.")
