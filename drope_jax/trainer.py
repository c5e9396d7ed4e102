"""The training loop: phases, logging, evaluation, checkpoints, resume, preemption.

A run is the list of phases of its plan (drope_jax/plan.py): RoPE and NoPE runs have
one; a DroPE run switches to NoPE at `drope.drop_at_step` (fresh schedule, optionally
fresh AdamW moments and new QK-norm gains). Each phase gets its own jitted step function
and, where its parameters differ, its own state structure. Metrics
at step s describe update s (0-based), which starts from checkpoint s; `eval_loss` on
that line is measured on the weights the update produced (checkpoint s + 1).

Running again on the same workdir resumes from the newest checkpoint that restores
(model, optimizer, step and so schedule and phase, data position); one from another
architecture or phase split is refused. Without one, `checkpoint.init_from` starts
from another run's weights. SIGTERM saves at the end of the step and exits 0.
"""

import contextlib
import signal
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from drope_jax import checkpoint
from drope_jax import compilation_cache
from drope_jax import config as config_lib
from drope_jax import directories
from drope_jax import errors
from drope_jax import flops
from drope_jax import gcs
from drope_jax import metrics as metrics_lib
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import profiling
from drope_jax import resume
from drope_jax import train_step
from drope_jax.data import pipeline
from drope_jax.data import tasks as tasks_lib
from drope_jax.data import tokenizers
from drope_jax.eval import task_scores


class NonFiniteLossError(errors.BadInput, RuntimeError):
  """The loss became NaN or inf and train.on_nan is 'stop'."""


class OutOfMemoryError(errors.BadInput, RuntimeError):
  """The compiled step needs more device memory than there is."""


def _first_line(error: Exception) -> str:
  """The compiler's own figure ('Used 140.2G of 95.7G hbm'), without the XLA dump."""
  text = str(error).split("RESOURCE_EXHAUSTED:", 1)[-1].strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


class _Preemption:
  """Turns SIGTERM (TPU maintenance, spot reclaim) into 'save and exit 0' at a step end.

  One process: a Python handler sets a flag. Several: the handler JAX's preemption sync
  manager installs in `jax.distributed.initialize` catches SIGTERM (so no Python one is
  installed over it), and `reached_preemption_sync_point` agrees on a step that every
  process reaches: all save the same checkpoint. It must be asked at every step.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.requested = False
    if not self.multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self.multi_process:
      signal.signal(signal.SIGTERM, self._previous)


def _check_data(config):
  """The data sources and the tokenizer exist and fit the model's vocabulary."""
  pipeline.check(config.data, config.train.seq_len)
  tokenizer = pipeline.make_tokenizer(config.data)
  tokenizers.check_vocab(tokenizer, config.model.vocab_size)


def itstime(count: int, every: int, total: int) -> bool:
  """Whether a periodic action is due at `count`: every `every`-th, and at `total`.

  Logs count update indices (step 0 is logged); evaluations and checkpoints count
  updates done (checkpoint `step + 1` follows update `step`).
  """
  return count % every == 0 or count == total


def _global_batch(local_batch: dict, sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


class Trainer:

  def __init__(self, config, workdir: str, *, started: float | None = None):
    """`started`: when the process started (time.time()), for the restart-to-first-step
    line; default: now."""
    self._started = time.time() if started is None else started  # None once reported.
    # Everything a run can be refused for is checked before anything is written.
    config_lib.validate(config)
    profile_steps = profiling.window(config.profile.steps, config.train.steps)
    _check_data(config)
    directories.check_writable(workdir, f"--workdir={workdir}")
    self.config = config
    self.workdir = epath.Path(workdir)
    self.plan = plan_lib.make(config)
    self.mesh = parallel.make_mesh(config.mesh)
    # Before any collective: a process stopping here must not leave a peer mid-way.
    parallel.check_batch(config.train.batch_size, config.train.grad_accum, self.mesh)
    self.tx = optim.make_optimizer(config.train)
    self.lr_fn = optim.lr_schedule(config)
    # Each phase's structure and shardings: a phase adding QK-norm gains has its own.
    builds = {phase: train_step.build(config, self.mesh, self.tx,
                                      phase.model_config(config.model))
              for phase in self.plan.phases}
    self.built = {phase: built for phase, (built, _) in builds.items()}
    self._init_fn = builds[self.plan.phases[0]][1]
    t = config.train
    if t.batch_size % jax.process_count():
      raise config_lib.ConfigError(
          f"train.batch_size={t.batch_size} must divide among {jax.process_count()} "
          "processes")
    self.local_batch = t.batch_size // jax.process_count()
    self.tokens_per_step = t.batch_size * t.seq_len
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    self.ckpt = checkpoint.Checkpointer(str(self.workdir / "checkpoints"),
                                        config.checkpoint, keep_steps=self.plan.drop_steps)
    if config.checkpoint.init_from and not self.ckpt.steps():
      # Refused now, not after compiling init (a resume ignores it).
      resume.init_source(config)
    # A gs:// workdir gets its metric files through a local mirror (see gcs.py).
    self.mirror = None
    if gcs.is_remote(workdir) and jax.process_index() == 0:
      self.mirror = gcs.MetricsMirror(workdir)
    metrics_dir = self.mirror.local if self.mirror else self.workdir
    self.writer = metrics_lib.MetricsWriter(str(metrics_dir), total_steps=t.steps,
                                            run_config=config, run_name=workdir)
    self.flops_per_token = flops.training_flops_per_token(config.model, t.seq_len)
    self.peak_flops = flops.peak_flops_per_device(dtype=config.model.dtype)
    self._tasks = None  # synthetic tasks' evaluation documents, drawn at first use.
    self.trace = profiling.StepTrace(profile_steps, workdir)

  # --- state -----------------------------------------------------------------------

  def _data_iter(self, split: str, num_epochs=None):
    return pipeline.make_iterator(
        self.config.data, seq_len=self.config.train.seq_len,
        batch_size=self.local_batch, seed=self.config.seed, split=split,
        shard_index=jax.process_index(), shard_count=jax.process_count(),
        num_epochs=num_epochs)

  def _restore_or_init(self, data_iter):
    """The latest checkpoint of this workdir; else checkpoint.init_from; else init."""
    changes = {}  # of the checkpoint used (others may have been tried).

    def check(step, meta):
      changes["keys"] = resume.check_resume(self.config, self.plan,
                                            f"{self.ckpt.directory}/{step}", step, meta)

    step, state, meta = self.ckpt.restore_latest(
        lambda step: self.built[self.plan.of_checkpoint(step)].abstract_state, data_iter,
        check_meta=check)
    if state is not None:
      if state.opt_state is None:  # saved fresh (an import's step 0): make it again.
        built = self.built[self.plan.of_checkpoint(step)]
        with parallel.mesh_context(self.mesh):
          state = state.replace(opt_state=jax.jit(
              self.tx.init, out_shardings=built.state_shardings.opt_state)(state.params))
      if changes["keys"]:
        logging.warning("resuming with config changes: %s", "; ".join(changes["keys"]))
      self.writer.info(f"resumed from {self.ckpt.directory}/{step} "
                       f"(phase {meta['phase']}, {meta['tokens_seen']} tokens seen)")
      return state
    state = self._init_fn()
    if self.config.checkpoint.init_from:
      # init_from starts a run at step 0: its first phase.
      state, line = resume.init_from(self.config, state,
                                     self.built[self.plan.phases[0]].abstract_state)
      self.writer.info(line)
    return state

  def _meta(self, step: int) -> dict:
    phase = self.plan.of_checkpoint(step)
    return dict(step=step, phase=phase.name, qk_norm=phase.qk_norm,
                tokens_seen=step * self.tokens_per_step,
                code_version=checkpoint.code_version(),
                config=self.config.to_dict())

  def _save(self, state, data_iter):
    step = int(jax.device_get(state.step))
    if self.ckpt.manager.latest_step() != step:
      self.ckpt.save(step, state, data_iter, self._meta(step))
    if self.mirror:  # the metrics up to this checkpoint outlive a kill.
      self.mirror.sync(force=True)

  # --- evaluation ------------------------------------------------------------------

  def _evaluate(self, state, eval_step, predict_fn) -> dict:
    """eval_loss on held-out batches, and `<task>_accuracy` for every synthetic task in
    the mixture (on the documents `evaluate --evals=<task>` scores at 1x)."""
    loss_sum = weight_sum = 0.0
    eval_iter = self._data_iter("eval", num_epochs=None)
    for _ in range(self.config.train.eval_batches):
      batch = _global_batch(next(eval_iter), self.batch_sharding)
      l, w = jax.device_get(eval_step(state.params, batch))
      loss_sum, weight_sum = loss_sum + float(l), weight_sum + float(w)
    results = {"eval_loss": loss_sum / max(weight_sum, 1.0)}
    for name, documents in self._task_documents().items():
      scores = task_scores.score(predict_fn, state.params, documents, mesh=self.mesh,
                                 batch_size=self.local_batch)
      results[f"{name}_accuracy"] = scores.accuracy
    return results

  def _task_documents(self) -> dict:
    if self._tasks is None:
      cfg = self.config
      count = cfg.train.eval_batches * cfg.train.batch_size
      tokenizer = pipeline.make_tokenizer(cfg.data)
      params = tasks_lib.Params.from_config(cfg.data.task)
      self._tasks = {
          name: tasks_lib.documents(name, params, tokenizer, length=cfg.train.seq_len,
                                    seed=0, count=count)
          for name in pipeline.component_names(cfg.data) if name in tasks_lib.TASKS}
    return self._tasks

  # --- the loop --------------------------------------------------------------------

  def run(self):
    data_iter = self._data_iter("train")
    state = self._restore_or_init(data_iter)
    preemption = _Preemption()
    try:
      for phase in self.plan.phases:
        if int(jax.device_get(state.step)) >= phase.end:
          continue
        state = self._run_phase(phase, state, data_iter, preemption)
        if state is None:  # preempted: saved and stopping.
          return
      self._finish(state, data_iter)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise OutOfMemoryError(
          f"the train step does not fit in device memory: {_first_line(e)}. Lower "
          f"train.seq_len ({self.config.train.seq_len}) or train.batch_size, raise "
          "train.grad_accum, set model.remat=full, or shard over more devices "
          "(mesh.shape); `python -m drope_jax.compile` sizes a config without a "
          "device") from e
    finally:
      self.trace.stop()
      preemption.restore()
      self.ckpt.close()
      self.writer.close()
      if self.mirror:
        self.mirror.close()

  def _enter_phase(self, phase: plan_lib.Phase, state, data_iter):
    """At a phase's first step (not a resume inside it): keep the previous phase's last
    state as a checkpoint, then move the state onto this phase's structure."""
    if phase.start == 0 or int(jax.device_get(state.step)) != phase.start:
      return state
    self._save(state, data_iter)
    state = train_step.carry_over(self.built[phase], state,
                                  reset_optimizer=phase.reset_optimizer)
    self.writer.info(
        f"step {phase.start}: entering {phase.name} ({phase.positional.kind}, qk_norm "
        f"{phase.qk_norm}, optimizer {'reset' if phase.reset_optimizer else 'kept'})")
    return state

  def _run_phase(self, phase: plan_lib.Phase, state, data_iter, preemption):
    cfg = self.config
    state = self._enter_phase(phase, state, data_iter)
    built = self.built[phase]
    step_fn = train_step.make_train_step(cfg, built, self.lr_fn, phase.positional)
    eval_step = train_step.make_eval_step(built, phase.positional,
                                           cfg.train.loss_chunk)
    predict_fn = task_scores.make_predict_fn(built.graphdef, phase.positional)
    pending = []  # (step, metrics on device, extra): read while the next step runs.
    throughput = _Throughput()
    steps = cfg.train.steps
    for step in range(int(jax.device_get(state.step)), phase.end):
      batch = _global_batch(next(data_iter), self.batch_sharding)
      self.trace.before(step)
      state, step_metrics = step_fn(state, batch)
      if self._started is not None:
        self._report_first_step(step_metrics)
      extra = {}
      pending.append((step, step_metrics, extra))
      # The previous step is read while this one runs: its time ends the window there.
      self._flush(pending, phase, throughput, keep=1)
      if itstime(step + 1, cfg.train.eval_every, steps):
        jax.block_until_ready(step_metrics)  # the step's own time stays in its window.
        with throughput.paused():
          # At INFO (--verbosity=0): benchmarks/kill_resume kills a run mid-evaluation.
          logging.info("evaluating the weights of checkpoint %d", step + 1)
          extra.update(self._evaluate(state, eval_step, predict_fn))
      traced = self.trace.after(step, state)
      if traced:
        self.writer.info(f"step {step}: trace of profile.steps written to {traced}")
      preempted = preemption.reached(step + 1)
      save = preempted or itstime(step + 1, cfg.checkpoint.every_steps, steps)
      # Before a save this step is logged (and checked) too: a checkpoint never follows
      # an unseen NaN, and metrics.jsonl covers every step the checkpoint holds.
      if save:
        self._flush(pending, phase, throughput, keep=0)
        with throughput.paused():
          self._save(state, data_iter)
      if preempted:
        self.ckpt.wait()
        self.writer.info(f"preempted: saved step {step + 1}; exiting cleanly")
        return None
    self._flush(pending, phase, throughput, keep=0)
    return state

  def _report_first_step(self, step_metrics):
    """How long this process took to its first step, and what the compilation cache
    saved of it (a restart's figure to watch)."""
    jax.block_until_ready(step_metrics)
    self.writer.info(f"first step done {time.time() - self._started:.1f} s after the "
                     f"process started ({compilation_cache.summary()})")
    self._started = None

  def _flush(self, pending: list, phase, throughput, *, keep: int):
    """Reports all but the newest `keep` pending steps."""
    while len(pending) > keep:
      self._report(*pending.pop(0), phase, throughput=throughput)

  def _report(self, step, step_metrics, extra, phase, *, throughput):
    """Checks step `step` for a non-finite loss and logs it when due."""
    cfg = self.config
    m = jax.device_get(step_metrics)
    nonfinite = bool(m["nonfinite"])
    if nonfinite:
      if cfg.train.on_nan == "stop":
        raise NonFiniteLossError(
            f"non-finite loss ({float(m['loss'])}) or gradient at step {step}: the update "
            f"was not applied, and the checkpoints in {self.ckpt.directory} (all from "
            "before it) are intact. Lower train.lr, raise warmup, or set "
            "--config.train.on_nan=skip to skip such batches; then run again to resume.")
      logging.warning("step %d: non-finite loss or gradient; batch skipped", step)
      extra = dict(extra, skipped=True)
    tokens_per_sec = throughput.tick(self.tokens_per_step)
    if not (extra or itstime(step, cfg.train.log_every, cfg.train.steps - 1)):
      return
    record = dict(phase=phase.name, loss=float(m["loss"]), lr=float(m["lr"]),
                  grad_norm=float(m["grad_norm"]),
                  tokens_seen=(step + 1) * self.tokens_per_step, **extra)
    record["tokens_per_sec"] = tokens_per_sec
    if self.peak_flops:
      record["mfu"] = flops.mfu(tokens_per_sec / jax.device_count(),
                                self.flops_per_token, self.peak_flops)
    throughput.reset()
    self.writer.write(step, record)
    if self.mirror:
      self.mirror.sync()

  def _finish(self, state, data_iter):
    steps = self.config.train.steps
    self._save(state, data_iter)
    self.ckpt.wait()
    self.writer.info(f"done: {steps} steps; checkpoints in {self.ckpt.directory}")


class _Throughput:
  """Tokens/s over the steps finished since the last log (the first window of a phase
  includes compiling its step function)."""

  def __init__(self):
    self._since = time.perf_counter()
    self._tokens = 0

  def tick(self, tokens: int) -> float:
    self._tokens += tokens
    return self._tokens / (time.perf_counter() - self._since)

  def reset(self):
    self._since, self._tokens = time.perf_counter(), 0

  @contextlib.contextmanager
  def paused(self):
    """Evaluation and saving are not training: their time is left out of the window."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._since += time.perf_counter() - start
