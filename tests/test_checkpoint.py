"""Exact resume after kill -9 and after SIGTERM (through the real command), one trainer per workdir, a clean
stderr, and fallback from a damaged checkpoint."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from imgrec import train, workdir as wd
from imgrec.errors import EXIT_PREEMPTED, UserError
from tests.conftest import tiny_config
from tests.helpers import ROOT, photo_folder, run_python

TRAIN_ARGS = ["--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.hidden=32", "--config.batch_size=32",
              "--config.steps=240", "--config.checkpoint_every=20", "--config.eval_every=120", "--config.log_every=20"]


ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def _train_cmd(workdir):
  return [sys.executable, "-m", "imgrec", "train", "--workdir", str(workdir), *TRAIN_ARGS]


def _leaves(workdir):
  _, _, _, state = wd.restore(str(workdir))
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


def _steps(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


def _wait_for_checkpoint(proc, workdir, step):
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not any(s >= step for s in _steps(workdir)):
    time.sleep(0.05)


def _kill_9_after_checkpoint(cmd, workdir, step):
  """Starts `cmd`, kills it with SIGKILL once a checkpoint at or after `step` exists; returns the steps left."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_checkpoint(proc, workdir, step)
  assert proc.poll() is None, "training finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return _steps(workdir)


def _assert_same_as(straight_workdir, workdir, steps=240):
  step_a, a = _leaves(straight_workdir)
  step_b, b = _leaves(workdir)
  assert step_a == step_b == steps
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run of the real command: (workdir, its stderr)."""
  workdir = tmp_path_factory.mktemp("straight") / "w"
  proc = subprocess.run(_train_cmd(workdir), cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
  return workdir, proc.stderr


def test_a_normal_run_leaves_no_traceback_on_stderr(straight):
  _, stderr = straight
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr and "ERROR" not in stderr
  assert "train: 100%" in stderr  # control: this is the run's stderr (its progress bar), not an empty capture


def test_kill_and_resume_is_bit_identical(straight, tmp_path):
  killed = tmp_path / "killed"
  steps_at_kill = _kill_9_after_checkpoint(_train_cmd(killed), killed, 40)
  assert steps_at_kill and steps_at_kill[-1] < 240

  out = subprocess.run(_train_cmd(killed), cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
  assert "resuming at step" in out.stdout and "Traceback" not in out.stderr
  assert "is gone" in out.stderr  # the killed process's lock, taken over
  _assert_same_as(straight[0], killed)


@pytest.mark.slow
def test_kill_and_resume_with_two_decode_workers_is_bit_identical(tmp_path):
  """Host crops and flips drawn in 2 Grain worker processes: kill -9 then resume equals the straight run."""
  photo_folder(tmp_path / "photos", n=60, size=(24, 64))
  extra = [f"--config.data.source=folder:{tmp_path / 'photos'}", "--config.data.image_size=16",
           "--config.data.test_fraction=0.25", "--config.data.workers=2", "--config.steps=60",
           "--config.checkpoint_every=10", "--config.eval_every=60"]
  cmd = lambda w: _train_cmd(w) + extra
  subprocess.run(cmd(tmp_path / "straight"), cwd=ROOT, env=ENV, check=True, capture_output=True)
  killed = tmp_path / "killed"
  steps_at_kill = _kill_9_after_checkpoint(cmd(killed), killed, 20)
  assert steps_at_kill and steps_at_kill[-1] < 60
  out = subprocess.run(cmd(killed), cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
  assert "resuming at step" in out.stdout
  _assert_same_as(tmp_path / "straight", killed, steps=60)


def test_sigterm_saves_at_the_current_step_exits_75_and_the_rerun_is_bit_identical(straight, tmp_path):
  workdir = tmp_path / "w"
  with open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(_train_cmd(workdir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    _wait_for_checkpoint(proc, workdir, 40)
    proc.send_signal(signal.SIGSTOP)  # held still mid-run, its lock held, while a second trainer tries
    assert proc.poll() is None, "training finished before it could be stopped; make it longer"
    second = subprocess.run(_train_cmd(workdir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    code = proc.wait(timeout=240)
  assert second.returncode == 2 and "Traceback" not in second.stderr
  assert f"is in use by another `imgrec train` (pid {proc.pid} on {socket.gethostname()}" in second.stderr
  stderr = (tmp_path / "stderr").read_text()
  assert code == EXIT_PREEMPTED, stderr[-3000:]
  found = re.search(r"imgrec: stopped by SIGTERM at step (\d+): checkpoint (\S+) written; rerun", stderr)
  assert found and "Traceback" not in stderr
  step = int(found.group(1))
  assert 40 <= step < 240 and _steps(workdir)[-1] == step and found.group(2).endswith(f"checkpoints/{step}")

  out = subprocess.run(_train_cmd(workdir), cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
  assert f"resuming at step {step}" in out.stdout and "Traceback" not in out.stderr
  _assert_same_as(straight[0], workdir)


def test_a_second_signal_exits_at_once():
  code = """
import os, signal, time
from imgrec.train import Signals
with Signals() as stop:
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.2)
  print("after the first:", stop.received, flush=True)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(5)
  print("not reached", flush=True)
"""
  proc = run_python(code, check=False)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
  assert "after the first: SIGTERM" in proc.stdout and "not reached" not in proc.stdout  # control: one does not
  assert "second SIGTERM: exiting now" in proc.stderr
  before = signal.getsignal(signal.SIGINT)
  with train.Signals():
    assert signal.getsignal(signal.SIGINT) != before
  assert signal.getsignal(signal.SIGINT) == before  # the handlers are put back


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
