"""The evaluation JSON files under W/eval/, which eval/report.py reads back."""

import json
import os

from drope_jax.eval import loading
from drope_jax.eval import methods


def write(run: loading.Run, kind: str, method: methods.Method, data: dict) -> str:
  """Writes W/eval/<kind>_<method>.json: the run's and the method's record, then data."""
  record = dict(run=run.name, **method.record(), step=run.step, phase=run.phase,
                train_len=run.train_len, **data)
  return write_record(run, f"{kind}_{method.name}", record)


def write_record(run: loading.Run, name: str, record: dict) -> str:
  """Writes W/eval/<name>.json as is (files of no one method); returns its path."""
  directory = os.path.join(run.workdir, "eval")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{name}.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return path
