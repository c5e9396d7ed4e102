"""Bad input to every command: exit status 2, one `error:` line naming the problem and
the fix, no traceback, and nothing written (the workdir or output is not created)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from drope_jax.data import prepare as prepare_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "--config=configs/tiny.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Broken inputs, and byte-level shards to break."""
  root = tmp_path_factory.mktemp("inputs")
  (root / "broken.py").write_text("def get_config(:\n")
  (root / "no_get_config.py").write_text("CONFIG = {}\n")
  (root / "tokenizer.json").write_text("{not json")
  (root / "a_file").write_text("")
  (root / "truncated.parquet").write_bytes(b"PAR1")
  (root / "corpus.txt").write_text("def f():\n  return 1\n" * 50)
  for name, edit in (("other_tokenizer", _tokenized_by_another),
                     ("no_train_docs", _without_training_documents)):
    prepare_lib.prepare(input_patterns=str(root / "corpus.txt"), output=str(root / name),
                        tokenizer_spec="byte", eval_fraction=0.0)
    manifest = json.loads((root / name / "manifest.json").read_text())
    edit(manifest)
    (root / name / "manifest.json").write_text(json.dumps(manifest))
  return root


def _tokenized_by_another(manifest):
  manifest.update(tokenizer_spec="hf:bpe/tokenizer.json",
                  tokenizer={"kind": "hf", "sha256": "0" * 64, "vocab_size": 259})


def _without_training_documents(manifest):
  manifest["splits"]["train"]["shards"] = []
  manifest["settings"]["eval_fraction"] = 0.5


CASES = {
    "missing config": ("train", ["--config=configs/nope.py"],
                       "cannot read configs/nope.py"),
    "broken config": ("train", ["--config={files}/broken.py"], "broken.py:1: "),
    "config without get_config": ("train", ["--config={files}/no_get_config.py"],
                                  "defines no get_config()"),
    "negative lr": ("train", [TINY, "--config.train.lr=-1"],
                    "train.lr=-1.0 must lie in [0, inf)"),
    "shards of another tokenizer": (  # found when the data is opened, in run().
        "train", [TINY, "--config.data.source=shards",
                  "--config.data.paths={files}/other_tokenizer"],
        "was tokenized by 'hf:bpe/tokenizer.json'"),
    "workdir under a file": ("train", [TINY, "--workdir={files}/a_file/run"],
                             "a_file is a file, not a directory"),
    "compilation cache under a file": (
        "train", [TINY, "--config.compilation_cache_dir={files}/a_file/cache"],
        "a_file is a file, not a directory"),
    "prepare: no input": ("data.prepare", ["--input={files}/none/*.txt"], "no files match"),
    "prepare: truncated parquet": ("data.prepare", ["--input={files}/truncated.parquet"],
                                   "truncated.parquet is not a readable Parquet file"),
    # Refused after its first shard was written: the output goes too.
    "prepare: every document held out": (
        "data.prepare", ["--input={files}/corpus.txt", "--eval_fraction=0.99"],
        "went to the eval split"),
    "train_tokenizer: no input": ("data.train_tokenizer", ["--input={files}/none.txt"],
                                  "no files match"),
    "evaluate: not a run": ("evaluate", [], "has no checkpoints/ directory"),
    "generate: bad flag": ("generate", ["--prompt=x", "--max_new_tokens=0"],
                           "--max_new_tokens must be >= 1"),
    "compile: unknown slice": ("compile", [TINY, "--topology=v9x-8"],
                               "unknown TPU generation"),
    "flag parse error": ("evaluate", ["--niah_trials=many"], "--niah_trials"),
    "misspelt config key": ("train", [TINY, "--config.train.stepz=3"],
                            '--config.train.stepz: no such config key (Did you mean '
                            '"steps" instead of "stepz"?)'),
}
_OUTPUT_FLAG = {"train": "--workdir", "data.prepare": "--output",
                "data.train_tokenizer": "--output", "evaluate": "--workdir",
                "generate": "--workdir"}


# The same checks in process (they run before the Trainer touches a device or a file).
TRAINER_CASES = {
    "vocab smaller than the tokenizer's": (
        {"model.vocab_size": 200},
        "has 259 ids but the model's embedding has only model.vocab_size=200: set "
        "--config.model.vocab_size to at least 259"),
    "unknown source": ({"data.source": "bogus"}, "unknown data.source 'bogus'"),
    "shards without paths": ({"data.source": "shards"}, "needs data.paths"),
    "shards without training documents": (
        {"data.source": "shards", "data.paths": "{files}/no_train_docs"},
        "with a smaller --eval_fraction"),
    "malformed tokenizer.json": ({"data.tokenizer": "hf:{files}/tokenizer.json"},
                                 "is not a Hugging Face tokenizer.json"),
    "b2 of 1": ({"train.b2": 1.0}, "train.b2=1.0 must lie in [0, 1)"),
    "zero eps": ({"train.eps": 0.0}, "train.eps=0.0 must lie in (0, inf)"),
    "negative weight decay": ({"train.weight_decay": -0.1}, "train.weight_decay"),
    "negative clipping": ({"train.grad_clip": -1.0}, "train.grad_clip"),
    "min_lr_ratio above 1": ({"train.min_lr_ratio": 2.0}, "train.min_lr_ratio"),
    "negative recalibration lr": ({"drope.lr": -1e-3}, "drope.lr"),
    "warmup past the drop": ({"train.warmup_steps": 121},
                             "must end within the pretraining phase (120 steps)"),
    "recalibration warmup past the end": (
        {"drope.warmup_steps": 41}, "must end within the recalibration (40 steps"),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_the_trainer_refuses_before_step_0(case, files, tmp_path):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from drope_jax import errors  # pylint: disable=g-import-not-at-top
  from drope_jax import trainer  # pylint: disable=g-import-not-at-top
  overrides, message = TRAINER_CASES[case]
  config = tiny.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value.format(files=files) if isinstance(value, str) else value
  with pytest.raises(errors.BadInput) as refused:
    trainer.Trainer(config, str(tmp_path / "run")).run()
  assert message in str(refused.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, files, tmp_path):
  command, args, message = CASES[case]
  out = tmp_path / "out"
  args = [a.format(files=files) for a in args]
  if command in _OUTPUT_FLAG and not any(a.startswith("--workdir=") for a in args):
    args.append(f"{_OUTPUT_FLAG[command]}={out}")
  if command == "train" and not any(a.startswith("--config=") for a in args):
    args.append(TINY)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  result = subprocess.run([sys.executable, "-m", f"drope_jax.{command}", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert not out.exists()


def test_a_step_too_big_for_the_device_reports_the_compilers_figure_and_the_fix(
    tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from drope_jax import trainer  # pylint: disable=g-import-not-at-top

  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 150.3G of "
        "95.74G hbm. Exceeded hbm capacity by 54.56G.\n\nTotal hbm usage >= 150.8G:\n...")

  monkeypatch.setattr(trainer.Trainer, "_run_phase", out_of_memory)
  config = tiny.get_config()
  config.model.update(d_model=32, d_ff=64, n_layers=1, head_dim=8)
  with pytest.raises(trainer.OutOfMemoryError) as refused:
    trainer.Trainer(config, str(tmp_path / "run")).run()
  message = str(refused.value)
  assert "Used 150.3G of 95.74G hbm" in message and "Total hbm" not in message
  assert "train.seq_len (256)" in message and "python -m drope_jax.compile" in message


def test_an_unreachable_or_missing_bucket_is_one_sentence(monkeypatch):
  from drope_jax import gcs  # pylint: disable=g-import-not-at-top
  from tests import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator.serve("drope-test") as env:
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    gcs.check_reachable("gs://drope-test/run")
    with pytest.raises(gcs.UnreachableError, match="gs://other does not exist"):
      gcs.check_reachable("gs://other/run")
  # The emulator is gone: nothing answers on its port.
  with pytest.raises(gcs.UnreachableError, match="gs://drope-test did not answer "
                     "within 1 s: check the bucket's name, the network"):
    gcs.check_reachable("gs://drope-test/run", timeout=1)
