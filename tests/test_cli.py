"""The command line: clear one-line errors with exit code 2; eval --json."""
import json
import os
import subprocess
import sys

import pytest

from imgrec import train
from imgrec.errors import UserError
from tests.conftest import tiny_config
from tests.helpers import ROOT


def imgrec(*args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "imgrec", *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("args,message", [
    (["train", "--config.optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    (["train", "--config.batch_size=abc"], "bad value 'abc' for config key 'batch_size': expected a int"),
    (["train", "--config.model.name=resnet9"], "unknown model 'resnet9'"),
    (["train", "--config.data.source=imagenet"], "unknown data source 'imagenet'"),
    (["train", "--config.data.source=mnist"], "needs the directory of its IDX files"),
    (["train", "--config", "configs/nope.py"], "config file 'configs/nope.py' not found"),
    (["train", "--config.data.augment=flip|blur"], "unknown augmentation 'blur'"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, capsys, monkeypatch):
  from imgrec import cli
  monkeypatch.chdir(ROOT)
  assert cli.main([*args, "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("imgrec: error:")


def test_error_exit_code_from_the_real_command():
  proc = imgrec("eval", "--workdir", "/nonexistent/w")
  assert proc.returncode == 2
  assert proc.stderr.strip() == "imgrec: error: /nonexistent/w/config.json not found: is this a workdir written by `imgrec train`?"


def test_eval_json_last_line(trained_workdir):
  proc = imgrec("eval", "--workdir", trained_workdir, "--json")
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(summary) >= {"split", "accuracy", "loss", "examples"}
  assert summary["split"] == "test" and summary["examples"] == 359 and 0.5 < summary["accuracy"] <= 1


def test_divergence_stops_naming_the_step(tmp_path):
  cfg = tiny_config(steps=40, log_every=5)
  cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.warmup_epochs = "sgd", 1e6, 0.0, 0.0
  with pytest.raises(UserError, match=r"training diverged at step \d+: loss (nan|inf)"):
    train.train(cfg, str(tmp_path))
