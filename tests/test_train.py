import json
import os

import numpy as np

from tests.helpers import assert_png


def test_trained_workdir_has_results(trained_workdir):
  for name in ("config.json", "dataset.json", "metrics.jsonl", "curves.png", "checkpoints"):
    assert os.path.exists(os.path.join(trained_workdir, name)), name
  assert_png(os.path.join(trained_workdir, "curves.png"), 800, 300)
  with open(os.path.join(trained_workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if r["split"] == "test"]
  assert evals and evals[-1]["step"] == 60
  assert evals[-1]["accuracy"] > 0.5  # 60 tiny steps on digits; chance is 0.1
  assert all(np.isfinite(r["loss"]) for r in records)
