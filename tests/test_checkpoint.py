"""Exact resume after kill -9, and fallback from a damaged checkpoint."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from imgrec import train, workdir as wd
from imgrec.errors import UserError
from tests.conftest import tiny_config
from tests.helpers import ROOT

TRAIN_ARGS = ["--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.hidden=32", "--config.batch_size=32",
              "--config.steps=240", "--config.checkpoint_every=20", "--config.eval_every=120", "--config.log_every=20"]


def _train_cmd(workdir):
  return [sys.executable, "-m", "imgrec", "train", "--workdir", str(workdir), *TRAIN_ARGS]


def _leaves(workdir):
  _, _, _, state = wd.restore(str(workdir))
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


def photo_folder(root, n=60, classes=3):
  """Varied-size JPEGs and PNGs (some grayscale), decoded and randomly cropped in the workers."""
  rng = np.random.default_rng(0)
  for i in range(n):
    (root / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in rng.integers(24, 64, 2))
    shape = (h, w) if i % 3 == 0 else (h, w, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"c{i % classes}" / f"{i}.{'png' if i % 2 else 'jpg'}")
  return root


@pytest.mark.parametrize("data", ["digits", pytest.param("folder_workers2", marks=pytest.mark.slow)])
def test_kill_and_resume_is_bit_identical(tmp_path, data):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  extra, steps, kill_at = [], 240, 40
  if data == "folder_workers2":  # host crops and flips drawn in 2 worker processes
    extra = [f"--config.data.source=folder:{photo_folder(tmp_path / 'photos')}", "--config.data.image_size=16",
             "--config.data.test_fraction=0.25", "--config.data.workers=2", "--config.steps=60",
             "--config.checkpoint_every=10", "--config.eval_every=60"]
    steps, kill_at = 60, 20
  cmd = lambda w: _train_cmd(w) + extra
  subprocess.run(cmd(tmp_path / "straight"), cwd=ROOT, env=env, check=True, capture_output=True)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = killed / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpts.is_dir() and any(d.isdigit() and int(d) >= kill_at for d in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps_at_kill and steps_at_kill[-1] < steps

  out = subprocess.run(cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True, text=True)
  assert "resuming at step" in out.stdout
  step_a, a = _leaves(tmp_path / "straight")
  step_b, b = _leaves(killed)
  assert step_a == step_b == steps
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog):
  train.train(tiny_config(), str(tmp_path))  # checkpoints at steps 30 and 60
  latest = tmp_path / "checkpoints" / "60"
  files = [os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  with caplog.at_level("WARNING", logger="imgrec"):
    _, _, _, state = wd.restore(str(tmp_path))
  assert int(state.step) == 30
  assert any(str(latest) in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="config.json not found"):
    wd.restore(str(tmp_path))
