"""The synthetic-task ladder at CPU scale (benchmarks/reproduce.py --task=RUNG).

    --config=configs/ladder_cpu.py:RUNG:VARIANT     e.g. induction:rope

A 4-layer byte-level model (d 128, 8 heads) trained at 32 tokens on one rung of
drope_jax/data/tasks, sized before the grid ran so that RoPE learns the induction rung
at 1x within its budget on 2 CPU cores. Sizing runs (RoPE, in-run accuracy at 1x):
a 2-layer d 128 model stayed near chance on induction for 200-600 steps at 128 and 64
tokens (lr 3e-3 or 1e-2), and at 32 tokens crept to 58% by step 3,000 (a content-only
heuristic, "a value seen once so far", gives about 37%); this 4-layer model reached 89%
at step 700 and 99.6% at 1,400. Rungs:

  recall      multi-query associative recall, 4 pairs and 4 queries
  copy        a random segment repeated once (offset half the document)
  induction   one random 8-token segment, repeated once at a random offset
  mix         induction documents mixed with prose (the Python stdlib's source), as
              pretraining would have it: one document in two. Twice the induction
              rung's steps, so RoPE sees as many induction documents: at 1,200 steps
              its first grid's RoPE run was at 28.5% at 1x by step 999 (stopped there),
              short of learning the rung, so nothing else could be compared.

Variants: `rope`, `nope`, `drope` (benchmarks/reproduce.py sets the drop step).
"""

from drope_jax import config as config_lib

# rung -> (data.source, data.weights, train.steps, task settings)
RUNGS = {
    "recall": ("recall", None, 1200, dict(pairs=4)),
    "copy": ("copy", None, 400, dict()),
    "induction": ("induction", None, 1200, dict(pairs=1, span=8)),
    "mix": ("stdlib,induction", "1,1", 2400, dict(pairs=1, span=8)),
}


def get_config(arg: str = "induction:drope"):
  rung, _, variant = arg.partition(":")
  if rung not in RUNGS:
    raise ValueError(f"unknown rung {rung!r}: use one of {', '.join(RUNGS)} "
                     "(configs/ladder_cpu.py:RUNG:VARIANT)")
  source, weights, steps, task = RUNGS[rung]
  config = config_lib.base_config(variant or "drope")

  config.model.vocab_size = 264  # the byte tokenizer's 259 ids, rounded up.
  config.model.d_model = 128
  config.model.n_layers = 4
  config.model.n_heads = 8
  config.model.n_kv_heads = 8
  config.model.head_dim = 16
  config.model.d_ff = 512
  config.model.rope_theta = 10_000.0
  config.model.scan_layers = False  # faster on CPU (configs/tiny.py).

  config.data.source = source
  config.data.weights = weights
  config.data.tokenizer = "byte"
  # Whole documents per row: a task document is train.seq_len tokens + EOS.
  config.data.packing = "first_fit" if "," in source else "concat"
  config.data.task.update(task)

  config.train.steps = steps
  config.train.batch_size = 32
  config.train.seq_len = 32
  config.train.lr = 3e-3
  config.train.warmup_steps = 30
  config.train.log_every = 25
  config.train.eval_every = 25   # task accuracy at 1x: the learning curves.
  config.train.eval_batches = 4  # 128 documents.

  config.drope.drop_at_step = steps * 7 // 8
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 10

  config.checkpoint.every_steps = steps // 8
  config.checkpoint.max_to_keep = 2
  config.checkpoint.keep_period = steps // 8  # the DroPE runs branch from these.
  return config
