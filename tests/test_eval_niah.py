"""A model trained to copy from context retrieves needles with greedy cached decoding.

The NIAH machinery (prefill, per-row cache slots, greedy decode, exact-match scoring)
is only worth trusting if a model that can retrieve actually scores. Content-based
induction does not form within a CPU test's budget, so the task is the simpler copy
that does: a tiny 2-layer RoPE model learns in ~100 steps to repeat what it saw
SEQ / 2 tokens earlier. A needle (a 7-digit value) hidden at a random depth of a
haystack of random characters is then retrieved by prompting with the haystack and
its first part again: the model must continue with the value. The copy distance is
exact, so a decode position that is off by one fails the test. Chance: about 1e-7.
"""

import numpy as np

from drope_jax import optim
from drope_jax import train_step
from drope_jax.eval import generate
from drope_jax.data import needles
from drope_jax.eval import niah_runner
from drope_jax.model.positional import Positional
from tests import helpers

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz :?."
EOS, PAD = 62, 63
SEQ = 128
HALF = SEQ // 2
ROPE = Positional("rope", theta=10_000.0)


def decode(ids):
  return "".join(CHARS[i] for i in ids if i < len(CHARS))


def training_batch(rng, batch_size):
  """Random strings of HALF + 1 characters, repeated; the loss is on the repeat."""
  first = rng.integers(0, len(CHARS), (batch_size, HALF + 1))
  rows = np.concatenate([first, first], 1)[:, :SEQ + 1].astype(np.int32)
  weights = np.broadcast_to(np.arange(SEQ) >= HALF, (batch_size, SEQ))
  return dict(inputs=rows[:, :-1], targets=rows[:, 1:],
              positions=np.broadcast_to(np.arange(SEQ), (batch_size, SEQ)),
              segment_ids=np.ones((batch_size, SEQ), np.int32),
              weights=weights.astype(np.float32))


def needle_prompt(rng):
  """(prompt, value): letters with a 7-digit value at a random depth, then the
  letters again up to the value. Prompts differ in length (padding is exercised)."""
  haystack = rng.integers(CHARS.index("a"), CHARS.index("z") + 1, HALF + 1)
  value = "".join(rng.choice(list("0123456789"), 7))
  depth = int(rng.integers(1, HALF - 7))
  haystack[depth:depth + 7] = [CHARS.index(c) for c in value]
  return np.concatenate([haystack, haystack[:depth]]).astype(np.int32), value


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
  assert float(metrics["loss"]) < 0.1

  test_rng = np.random.default_rng(123)
  prompts, values = zip(*(needle_prompt(test_rng) for _ in range(32)))
  completions = generate.complete(
      built.graphdef, state.params, list(prompts), positional=ROPE,
      sampling=generate.Sampling(max_new_tokens=8), eos_id=EOS, pad_id=PAD,
      batch_size=16, vocab_limit=len(CHARS), width=SEQ, prefill_chunk=64)
  scores = [needles.score(decode(c), [v]) for c, v in zip(completions, values)]
  assert np.mean(scores) >= 0.75, [decode(c) for c in completions]


def test_answer_budget_covers_every_asked_number():
  class Bytes:
    def encode(self, text):
      return list(text.encode())
  assert needles.answer_budget(Bytes(), ["single"]) >= len(" 1234567.")
  assert needles.answer_budget(Bytes(), ["single", "multivalue"]) >= len(
      " 1234567, 2345678, 3456789 and 4567890.")
