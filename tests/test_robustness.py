"""Corruptions (identity at severity 0, monotone in severity) and adversarial accuracy."""
import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from imgrec import robustness
from tests.helpers import assert_png


def _images():
  """24 real digits, upscaled to 32x32 uint8 so blur, rotation and JPEG have room to act."""
  d = load_digits()
  x = (d.images[:24] / 16 * 255).astype(np.uint8)
  return np.kron(x, np.ones((4, 4), np.uint8))[..., None]


@pytest.mark.parametrize("name", robustness.CORRUPTIONS)
def test_corruption_identity_then_monotone(name):
  x = _images()
  assert robustness.corrupt(x, name, 0, seed=3) is x
  dist = [np.abs(robustness.corrupt(x, name, s, seed=3).astype(float) - x).mean() for s in range(6)]
  assert dist[0] == 0
  assert all(b > a for a, b in zip(dist, dist[1:])), (name, dist)
  y = robustness.corrupt(x, name, 5, seed=3)
  assert y.dtype == np.uint8 and y.shape == x.shape
  np.testing.assert_array_equal(y, robustness.corrupt(x, name, 5, seed=3))  # deterministic in the seed


def test_corruption_rejects_bad_input():
  from imgrec.errors import UserError
  with pytest.raises(UserError, match="unknown corruption"):
    robustness.corrupt(_images(), "fog", 1)
  with pytest.raises(UserError, match="severity"):
    robustness.corrupt(_images(), "contrast", 6)


def test_robustness_report_and_fgsm_lowers_accuracy(trained_workdir):
  # In-process (the CLI path is `imgrec.cli._robustness`, exercised in test_cli_robustness_bad_epsilons).
  r = robustness.robustness_workdir(trained_workdir, limit=128, corruptions=("gaussian_noise", "occlusion"),
                                    epsilons=(8,), pgd_steps=3)
  out = os.path.join(trained_workdir, "robustness")
  assert os.path.getsize(os.path.join(out, "robustness.png")) > 10000
  assert_png(os.path.join(out, "robustness.png"), 1000, 400)
  with open(os.path.join(out, "robustness.json")) as f:
    assert json.load(f)["corruptions"] == r["corruptions"]
  table = open(os.path.join(out, "robustness.md")).read()
  assert "| gaussian_noise |" in table and "| FGSM |" in table and "| PGD-3 |" in table
  assert r["examples"] == 128 and set(r["corruptions"]) == {"gaussian_noise", "occlusion"}
  clean = r["clean_accuracy"]
  assert clean > 0.5
  fgsm, pgd = r["adversarial"]["fgsm"], r["adversarial"]["pgd"]
  assert fgsm[0] < clean - 0.1  # FGSM hurts
  assert pgd[0] <= fgsm[0] + 0.02  # the iterated attack is at least about as strong
  assert r["corruptions"]["occlusion"][-1] < clean
  assert r["mean_corruption_accuracy"] == pytest.approx(np.mean([np.mean(v) for v in r["corruptions"].values()]))


def test_cli_robustness_bad_epsilons(trained_workdir, capsys):
  from imgrec import cli
  assert cli.main(["robustness", "--workdir", trained_workdir, "--epsilons", "4,big"]) == 2
  assert "--epsilons (in 1/255 units) '4,big': 'big' is not valid" in capsys.readouterr().err
  assert cli.main(["robustness", "--workdir", trained_workdir, "--corruptions", "fog"]) == 2
  assert "unknown corruption 'fog'" in capsys.readouterr().err


def test_every_attack_budget_runs_one_compiled_program(trained_workdir):
  """eps is an argument of the compiled attack, not a constant baked into a closure: three budgets, one
  compilation per attack; a zero budget leaves the clean accuracy, a large one lowers it."""
  from imgrec import parallel, steps, workdir as wd
  from imgrec.data import splits
  run = wd.restore(trained_workdir, params_only=True)
  data = splits.subset(wd.dataset(run).split("test"), np.arange(64))
  mesh = parallel.make_mesh()
  fgsm = robustness.make_attack(run.model, run.info["mean"], run.info["std"])
  acc = {e: steps.stream(fgsm, (run.variables, robustness.budget(e)), data, 32, mesh, 0).mean() for e in (0, 4, 16)}
  assert steps._jitted(fgsm, mesh)._cache_size() == 1
  logits = steps.stream(lambda v, b: steps.apply(run.model, v, b["image"], run.info["mean"], run.info["std"]),
                        run.variables, data, 32, mesh, 0)
  clean = (logits.argmax(-1) == data.labels).mean()
  assert acc[0] == clean and acc[16] < clean - 0.1, (acc, clean)
