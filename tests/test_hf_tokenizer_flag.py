"""`hf import --tokenizer`: weights that came without their tokenizer import exactly as
they do with it in place; without either, one message naming the files and the flag."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from drope_jax.eval import loading
from drope_jax.hf import convert
from drope_jax.hf import importer
from drope_jax.hf import source_tokenizer
from tests import hf_models
from tests.test_hf_framing import LLAMA_CHAT
from tests.test_hf_import import import_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """(model directory with its tokenizer, the weights alone, the tokenizer alone)."""
  complete = tmp_path_factory.mktemp("complete")
  hf_models.hf_model("llama").save_pretrained(complete)
  hf_models.tokenizer(str(complete), add_bos=True, chat_template=LLAMA_CHAT)
  weights, tokenizer = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("tok")
  for name in os.listdir(complete):
    target = tokenizer if name in source_tokenizer.FILES else weights
    shutil.copy(complete / name, target / name)
  return complete, weights, tokenizer


def _files(directory):
  """Relative paths, without OCDBT's data files (named at random as they are written)."""
  paths = (os.path.relpath(os.path.join(d, f), directory)
           for d, _, names in os.walk(directory) for f in names)
  return sorted(p for p in paths if "/d/" not in p)


def _json_without_workdir(workdir, name):
  return json.loads((workdir / name).read_text().replace(str(workdir), "WORKDIR"))


def assert_same_import(workdir, expected):
  """The same source files, checkpoint files and metadata, parameters, run config and
  framing (paths into the workdir aside)."""
  assert _files(workdir / "hf") == _files(expected / "hf")
  for name in _files(expected / "hf"):
    assert (workdir / "hf" / name).read_bytes() == (expected / "hf" / name).read_bytes()
  assert _files(workdir / "checkpoints") == _files(expected / "checkpoints")
  for name in ("config.json", "checkpoints/0/meta/metadata"):
    assert _json_without_workdir(workdir, name) == _json_without_workdir(expected, name)
  run, expected_run = loading.load_run(str(workdir)), loading.load_run(str(expected))
  assert run.framing == expected_run.framing == "bos"
  jax.tree.map(np.testing.assert_array_equal, run.params, expected_run.params)


def _python(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def in_place(sources, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("in_place")
  import_dir(sources[0], workdir)
  return workdir


def test_import_with_a_tokenizer_directory_equals_the_tokenizer_in_place(
    sources, in_place, tmp_path):
  _, weights, tokenizer = sources
  hf_config, tensors, files = importer.read_directory(weights, str(tokenizer))
  convert.import_model(hf_config, tensors, files, str(tmp_path / "run"))
  assert_same_import(tmp_path / "run", in_place)


def test_cli_import_with_a_tokenizer_file_equals_the_tokenizer_in_place(
    sources, in_place, tmp_path):
  _, weights, tokenizer = sources
  done = _python("drope_jax.hf", "import", f"--hf={weights}",
                 f"--tokenizer={tokenizer / 'tokenizer.json'}",
                 f"--workdir={tmp_path / 'run'}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "text framing bos" in done.stdout
  assert_same_import(tmp_path / "run", in_place)


def test_weights_alone_are_refused_naming_the_missing_files_and_the_flag(
    sources, tmp_path):
  done = _python("drope_jax.hf", "import", f"--hf={sources[1]}",
                 f"--workdir={tmp_path / 'run'}")
  assert done.returncode == 2
  (line,) = done.stderr.strip().splitlines()
  assert line.startswith(f"error: {sources[1]} has the weights but no tokenizer.json and "
                         "no tokenizer_config.json")
  assert "--tokenizer=DIR" in line and "--tokenizer=FILE" in line
  assert not (tmp_path / "run").exists()
  with pytest.raises(convert.HFError, match=r"--tokenizer=.* holds no tokenizer.json"):
    importer.read_directory(sources[1], str(sources[1]))
