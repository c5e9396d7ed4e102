"""The evaluation report from synthetic per-run JSON."""

import json
import os

import matplotlib.image
import pytest

from drope_jax.eval import report

VARIANTS = ("single", "multikey", "multiquery", "multivalue")


def write_run(root, run, method, train_len, ppl, success, with_buckets=True):
  """Writes <root>/<run>/eval/{perplexity,niah}.json; returns the workdir."""
  os.makedirs(os.path.join(root, run, "eval"))
  lengths = [train_len * m for m in (1, 2, 4)]
  perplexity = dict(run=run, method=method, train_len=train_len,
                    lengths=lengths, perplexity=ppl)
  if with_buckets:
    edges = [0, train_len // 2, train_len, 2 * train_len, 4 * train_len]
    perplexity["position_buckets"] = dict(edges=edges, loss={
        str(lengths[0]): [3.0, 2.9, None, None],
        str(lengths[2]): [3.0, 2.9, 3.2, 3.5]})
  results = [dict(variant=v, length=length, depth=depth,
                  success_rate=success[v] * (1 - depth / 2), trials=10)
             for v in VARIANTS for length in lengths[1:] for depth in (0.0, 0.5, 1.0)]
  niah = dict(run=run, method=method, results=results)
  for name, data in (("perplexity", perplexity), ("niah", niah)):
    with open(os.path.join(root, run, "eval", f"{name}.json"), "w") as f:
      json.dump(data, f)
  return os.path.join(root, run)


@pytest.fixture
def runs(tmp_path):
  return [
      write_run(tmp_path, "rope", "yarn", 1024, [21.73, 25.41, 88.05],
                dict(single=0.9, multikey=0.2, multiquery=0.4, multivalue=0.3)),
      write_run(tmp_path, "drope", "nope", 1024, [21.72, 23.18, 27.96],
                dict(single=1.0, multikey=0.6, multiquery=0.5, multivalue=0.6),
                with_buckets=False),
  ]


def test_report_files_and_plots(runs, tmp_path):
  out = tmp_path / "report"
  path = report.write_report(runs, str(out))
  assert path == str(out / "report.md")
  pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  assert pngs == ["loss_by_position.png", "niah_by_variant.png",
                  "niah_heatmap_drope_nope.png", "niah_heatmap_rope_yarn.png",
                  "perplexity_vs_length.png"]
  for png in pngs:
    assert os.path.getsize(out / png) > 1000
    image = matplotlib.image.imread(out / png)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
  text = open(path).read()
  for png in pngs:
    assert f"({png})" in text


def test_table_has_each_runs_numbers(runs, tmp_path):
  text = open(report.write_report(runs, str(tmp_path / "report"))).read()
  table = [line for line in text.splitlines() if line.startswith("|")]
  assert table[0].startswith("| run | method | train len | ppl 1x | ppl 2x | ppl 4x |")
  assert "single 2x" in table[0] and "multivalue 4x" in table[0]
  rope, drope = table[2], table[3]
  assert rope.startswith("| rope | yarn | 1024 | 21.73 | 25.41 | 88.05 |")
  assert drope.startswith("| drope | nope | 1024 | 21.72 | 23.18 | 27.96 |")
  # multikey: 0.6 at depths 0, 0.5, 1 scaled by 1, 0.75, 0.5 -> 45%.
  header = [cell.strip() for cell in table[0].split("|")]
  column = header.index("multikey 2x")
  assert drope.split("|")[column].strip() == "45.0"
  assert rope.split("|")[column].strip() == "15.0"


def test_json_files_and_missing_train_len(runs, tmp_path):
  niah_only = os.path.join(runs[0], "eval", "niah.json")
  with pytest.raises(ValueError, match="need \"train_len\""):
    report.write_report([niah_only], str(tmp_path / "a"))
  perplexity = os.path.join(runs[0], "eval", "perplexity.json")
  path = report.write_report([niah_only, perplexity], str(tmp_path / "b"))
  assert "| rope | yarn | 1024 | 21.73" in open(path).read()


def test_bad_inputs_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="no run directory"):
    report.write_report([str(tmp_path / "missing")], str(tmp_path / "out"))
  with pytest.raises(ValueError, match="no evaluation JSON"):
    report.write_report([str(tmp_path)], str(tmp_path / "out"))
  bad = tmp_path / "perplexity.json"
  bad.write_text(json.dumps(dict(run="r", perplexity=[1.0])))
  with pytest.raises(ValueError, match="lacks method, train_len, lengths"):
    report.write_report([str(bad)], str(tmp_path / "out"))
