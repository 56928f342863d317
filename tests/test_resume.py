"""Runs never lose work: the resume guard, damaged versus mismatched checkpoints, divergence, float16, a full
disk, the workdir lock, and commands pointed at data that moved. Each test has a control showing it can fail."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from imgrec import checkpoint, cli, config, evaluate, resume, steps, train, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from tests.conftest import tiny_config
from tests.helpers import ROOT
from tests.test_data import write_idx


def hashes(root):
  """{relative path: sha256} of every file under `root`."""
  out = {}
  for r, _, files in os.walk(root):
    for f in files:
      with open(os.path.join(r, f), "rb") as fh:
        out[os.path.relpath(os.path.join(r, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def leaves(workdir):
  state = wd.restore(str(workdir)).state
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


def saved_steps(workdir, sub="checkpoints"):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, sub)) if d.isdigit())


def write_idx_dir(path, images, labels, test_images, test_labels):
  os.makedirs(path, exist_ok=True)
  for prefix, x, y in (("train", images, labels), ("t10k", test_images, test_labels)):
    write_idx(os.path.join(path, f"{prefix}-images-idx3-ubyte"), x.astype(np.uint8), False)
    write_idx(os.path.join(path, f"{prefix}-labels-idx1-ubyte"), y.astype(np.uint8), False)


def random_idx_dir(path, size=10):
  rng = np.random.default_rng(0)
  write_idx_dir(path, rng.integers(0, 256, (200, size, size)), np.arange(200) % 10,
                rng.integers(0, 256, (50, size, size)), np.arange(50) % 10)


@pytest.fixture(scope="module")
def run60(tmp_path_factory):
  """tiny_config() trained to step 60 (checkpoints 30 and 60); tests copy it before touching it."""
  workdir = str(tmp_path_factory.mktemp("run60") / "w")
  train.train(tiny_config(), workdir)
  return workdir


def copy_of(workdir, tmp_path):
  return shutil.copytree(workdir, str(tmp_path / "w"))


# ---------------------------------------------------------------------------- the config on resume

def test_every_config_key_is_classified():
  keys = set(resume.config_leaves(config.defaults())) | set(config.FREE_KEYS)
  unclassified = sorted(k for k in keys if resume.rule(k) is None)
  assert not unclassified, f"classify these keys in imgrec/resume.py KEYS: {unclassified}"
  assert set(resume.KEYS.values()) == {resume.RUN, resume.LENGTH, resume.LOCATION, resume.OBSERVE}
  assert resume.rule("model.kwargs.hidden") == resume.RUN  # a free section's keys take its rule
  # Control: a key nobody classified is found, and is refused rather than accepted.
  assert resume.rule("data.brand_new_key") is None


@pytest.mark.parametrize("key,value,listed", [
    ("model.kwargs.hidden", 64, ["model.kwargs.hidden 32 -> 64"]),
    ("optim.name", "sgd", ["optim.name 'adamw' -> 'sgd'"]),
    ("data.source", "idx:DATA", ["data.source 'digits' -> 'idx:", "image_shape [8, 8, 1] -> [10, 10, 1]"]),
])
def test_a_changed_run_is_refused_and_the_workdir_is_untouched(run60, tmp_path, key, value, listed):
  workdir = copy_of(run60, tmp_path)
  if value == "idx:DATA":
    random_idx_dir(tmp_path / "data")
    value = f"idx:{tmp_path / 'data'}"
  before = hashes(workdir)
  cfg = config.override(tiny_config(), [f"{key}={value}"])
  with pytest.raises(UserError, match="holds another run") as e:
    train.train(cfg, workdir)
  for text in listed:
    assert text in str(e.value)
  assert "--restart" in str(e.value) and "new --workdir" in str(e.value)
  assert hashes(workdir) == before and not os.path.exists(os.path.join(workdir, resume.LOCK_FILE))
  # Control: an accepted change (log_every only observes) runs, and the hashes see what it writes.
  train.train(tiny_config(log_every=10), workdir)
  assert hashes(workdir) != before


def test_restart_moves_the_old_run_aside(run60, tmp_path, capsys):
  workdir = copy_of(run60, tmp_path)
  before = hashes(workdir)
  os.makedirs(os.path.join(workdir, ".git"))  # not the run's: --restart leaves them where they are
  for name in (".git/HEAD", "notes.txt"):
    with open(os.path.join(workdir, name), "w") as f:
      f.write("mine\n")
  cfg = tiny_config(steps=4, model__kwargs__hidden=16, checkpoint_every=4, eval_every=4)
  train.train(cfg, workdir, restart=True)
  previous = [d for d in os.listdir(workdir) if d.startswith("previous-")]
  assert len(previous) == 1 and "--restart: moved the previous run" in capsys.readouterr().out
  assert hashes(os.path.join(workdir, previous[0])) == before  # every file of the run, byte for byte
  assert {".git", "notes.txt"} <= set(os.listdir(workdir))
  assert saved_steps(workdir) == [4] and wd.restore(workdir).cfg.model.kwargs.hidden == 16
  # Control: without --restart, the same config is refused.
  with pytest.raises(UserError, match="holds another run"):
    train.train(tiny_config(steps=4, model__kwargs__hidden=8), workdir)


def test_a_shorter_run_is_refused(run60, tmp_path):
  workdir = copy_of(run60, tmp_path)
  with pytest.raises(UserError, match=r"steps 60 -> 40 \(shortens the run from 60 to 40 steps\)"):
    train.train(tiny_config(steps=40), workdir)


def _lrs(workdir):
  return {r["step"]: r["lr"] for r in wd.read_metrics(workdir) if r["split"] == "train"}


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_more_steps_resumes_as_a_run_of_that_length(tmp_path, capsys, schedule):
  """The schedule is recomputed for the new length. With a length-free schedule (constant after a fixed
  warm-up) the extended run equals a run that had the new length from the start, bit for bit; with cosine,
  from the resumed step on it follows that run's lr and ends where it ends, but the steps already trained used
  the shorter schedule, so the weights differ."""
  kw = dict(optim__schedule=schedule, optim__warmup_steps=10, checkpoint_every=30, eval_every=60, log_every=10)
  extended, straight = str(tmp_path / "extended"), str(tmp_path / "straight")
  train.train(tiny_config(steps=30, **kw), extended)
  short_lrs = _lrs(extended)
  train.train(tiny_config(steps=60, **kw), extended)
  assert "steps 30 -> 60: the run ends at step 60 (was 30)" in capsys.readouterr().out
  train.train(tiny_config(steps=60, **kw), straight)
  step_e, a = leaves(extended)
  step_s, b = leaves(straight)
  assert step_e == step_s == 60
  lr_e, lr_s = _lrs(extended), _lrs(straight)
  assert sorted(lr_e) == sorted(lr_s) and all(lr_e[s] == lr_s[s] for s in lr_s if s > 30)
  if schedule == "constant":
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  else:
    # Control: the cosine over 30 steps really differs from the one over 60 (else this test proves nothing),
    # and so do the weights trained under it.
    assert all(short_lrs[s] != lr_s[s] for s in short_lrs if s > 10)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- damaged versus mismatched

def test_a_checkpoint_of_another_shape_is_an_error_not_a_fresh_start(run60, tmp_path):
  workdir = copy_of(run60, tmp_path)
  other = str(tmp_path / "other")
  train.train(tiny_config(steps=30, model__kwargs__hidden=64), other)
  shutil.copytree(os.path.join(other, "checkpoints", "30"), os.path.join(workdir, "checkpoints", "90"))
  before = hashes(workdir)
  for attempt in (lambda: train.train(tiny_config(steps=120), workdir), lambda: wd.restore(workdir)):
    with pytest.raises(UserError, match=r"checkpoints/90 does not match") as e:
      attempt()
    assert "params/fc/kernel saved (64, 64) float32, expected (64, 32) float32" in str(e.value)
  assert hashes(workdir) == before and saved_steps(workdir) == [30, 60, 90]
  # Control: that checkpoint is not damaged: it restores under the config that wrote it.
  assert int(wd.restore(other).state.step) == 30


def _truncate_biggest(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_a_truncated_newest_checkpoint_falls_back_and_no_step_is_overwritten(run60, tmp_path, caplog):
  workdir = copy_of(run60, tmp_path)
  _, original = leaves(workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  at30 = hashes(os.path.join(ckpts, "30"))
  _truncate_biggest(os.path.join(ckpts, "60"))
  damaged = hashes(os.path.join(ckpts, "60"))
  with caplog.at_level("WARNING", logger="imgrec"):
    train.train(tiny_config(), workdir)
  assert any(f"{ckpts}/60 is unreadable" in r.getMessage() and "falling back" in r.getMessage()
             for r in caplog.records)
  aside = [d for d in os.listdir(workdir) if d.startswith("damaged-")]
  assert len(aside) == 1 and hashes(os.path.join(workdir, aside[0], "checkpoints", "60")) == damaged
  step, again = leaves(workdir)  # retrained from 30: the same step 60 as before the damage, bit for bit
  assert step == 60
  for x, y in zip(original, again):
    np.testing.assert_array_equal(x, y)
  assert hashes(os.path.join(ckpts, "30")) == at30
  # A longer run adds steps and leaves the existing ones byte-identical.
  at60 = hashes(os.path.join(ckpts, "60"))
  train.train(tiny_config(steps=90), workdir)
  assert saved_steps(workdir) == [30, 60, 90]
  assert hashes(os.path.join(ckpts, "30")) == at30 and hashes(os.path.join(ckpts, "60")) == at60
  # Control: the retraining really rewrote step 60 (its files differ from the damaged ones).
  assert at60 != damaged


def test_restart_in_a_directory_without_a_run_moves_nothing(tmp_path):
  """`imgrec train --workdir . --restart` in a repository: no config.json, so nothing is moved."""
  (tmp_path / ".git").mkdir()
  (tmp_path / "README.md").write_text("mine\n")
  assert resume.move_aside(str(tmp_path)) is None
  assert sorted(os.listdir(tmp_path)) == [".git", "README.md"]


def test_a_failed_restore_that_is_not_damage_moves_nothing(run60, tmp_path, monkeypatch):
  """Device memory running out while step 60 is read is not damage: a UserError naming the cause, and no
  checkpoint is skipped, moved aside or retrained."""
  workdir = copy_of(run60, tmp_path)
  before = hashes(workdir)
  real = ocp.CheckpointManager.restore

  def out_of_memory(self, step, *a, **kw):
    if step == 60:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.21GiB")
    return real(self, step, *a, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "restore", out_of_memory)
  with pytest.raises(UserError, match=r"restoring checkpoint .*/60 failed: RuntimeError: RESOURCE_EXHAUSTED.*"
                     "nothing was moved"):
    train.train(tiny_config(steps=90), workdir)
  assert hashes(workdir) == before
  assert checkpoint.is_damage(ValueError('OUT_OF_RANGE: Error reading "params.head.kernel/0.0"'))  # control


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(run60, tmp_path):
  workdir = copy_of(run60, tmp_path)
  for step in (30, 60):
    _truncate_biggest(os.path.join(workdir, "checkpoints", str(step)))
  before = hashes(workdir)
  with pytest.raises(UserError, match="no checkpoint in .* is readable"):
    train.train(tiny_config(), workdir)
  assert hashes(workdir) == before


def test_a_metrics_line_cut_short_by_a_kill_is_left_out(run60, tmp_path, caplog):
  workdir = copy_of(run60, tmp_path)
  path = os.path.join(workdir, wd.METRICS_FILE)
  records = wd.read_metrics(workdir)
  with open(path, "a") as f:
    f.write('{"step": 61, "split": "tr')  # a kill -9 in the middle of an append
  with caplog.at_level("WARNING", logger="imgrec"):
    train.train(tiny_config(steps=70), workdir)
  assert any("the last line is cut short" in r.getMessage() for r in caplog.records)
  assert wd.read_metrics(workdir)[:len(records)] == records and wd.read_metrics(workdir)[-1]["step"] == 70
  # Control: a bad line that is not the last one is an error, not silently dropped.
  with open(path) as f:
    lines = f.readlines()
  with open(path, "w") as f:
    f.writelines(lines[:1] + ["garbage\n"] + lines[1:])
  with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not a JSON record"):
    wd.read_metrics(workdir)


# ---------------------------------------------------------------------------- divergence

def _poison(monkeypatch, at_step, field):
  """Makes the train step see NaN params at step `at_step` (1-based; field "params"), or write NaN EMA params
  there (field "ema_params": loss and gradients stay finite). Returns a list counting executed steps."""
  make = steps.make_train_step

  def make_poisoned(*args, **kwargs):
    step = make(*args, **kwargs)

    def poisoned(state, batch, *rest):
      nan = lambda tree: jax.tree.map(lambda p: jnp.where(state.step == at_step - 1, jnp.nan, p), tree)
      if field == "params":
        return step(state.replace(params=nan(state.params)), batch, *rest)
      new, metrics = step(state, batch, *rest)
      return new.replace(ema_params=nan(new.ema_params)), metrics
    return poisoned

  compile_ = train.compile_train_step
  calls = []

  def counting(*args, **kwargs):
    fn = compile_(*args, **kwargs)
    return lambda state, batch: (calls.append(1), fn(state, batch))[1]

  if at_step:
    monkeypatch.setattr(steps, "make_train_step", make_poisoned)
  monkeypatch.setattr(train, "compile_train_step", counting)
  return calls


@pytest.mark.parametrize("field", ["params", "ema_params"])
def test_a_nan_at_step_k_stops_there_without_a_later_checkpoint(tmp_path, monkeypatch, field):
  k = 63
  cfg = tiny_config(steps=100, log_every=1000, eval_every=1000, checkpoint_every=50, optim__ema_decay=0.9)
  calls = _poison(monkeypatch, k, field)
  expected = (f"training diverged at step {k}: loss nan" if field == "params" else  # (the EMA: at the next check)
              "training diverged: the state after step 100 holds non-finite values")
  with pytest.raises(UserError, match=expected):
    train.train(cfg, str(tmp_path / "w"))
  assert saved_steps(tmp_path / "w") == [50]
  records = wd.read_metrics(str(tmp_path / "w"))
  assert not [r for r in records if r["split"] != "train"]  # nothing evaluated from the non-finite state
  if field == "params":  # stopped within the steps in flight, not at the next log or checkpoint (100)
    assert len(calls) <= k + train.MAX_UNCHECKED and all(r["step"] <= k - 1 for r in records)
  # Control: unpoisoned, the same run goes on to write a checkpoint after step k.
  monkeypatch.undo()
  calls = _poison(monkeypatch, None, field)
  train.train(cfg, str(tmp_path / "control"))
  assert saved_steps(tmp_path / "control") == [50, 100] and len(calls) == 100


def test_float16_is_refused_pointing_to_bfloat16(tmp_path):
  with pytest.raises(UserError, match="float16.*refused.*bfloat16"):
    train.train(tiny_config(model__dtype="float16"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  # Control: bfloat16 trains.
  _, result = train.train(tiny_config(model__dtype="bfloat16", steps=4, checkpoint_every=4, eval_every=4),
                          str(tmp_path / "bf16"))
  assert np.isfinite(result["loss"])


# ---------------------------------------------------------------------------- a full disk

def _train_cli(workdir, *extra, fsize=None):
  """`imgrec train` on tiny_config() in a subprocess, its files limited to `fsize` bytes each (RLIMIT_FSIZE: a
  write past it fails with EFBIG in the kernel, whatever writes it, TensorStore's C++ included, as root too)."""
  cfg = tiny_config()
  args = ["train", "--workdir", workdir, f"--config.model.kwargs.widths={tuple(cfg.model.kwargs.widths)}",
          "--config.model.kwargs.hidden=32", "--config.batch_size=32", "--config.log_every=20",
          "--config.eval_every=60", "--config.data.prefetch=0", *extra]
  code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, resource.RLIM_INFINITY)); "
          f"from imgrec import cli; sys.exit(cli.main({args!r}))")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", IMGREC_COMPILE_CACHE="off")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_a_full_disk_while_saving_is_a_clear_error_and_the_earlier_checkpoint_restores(tmp_path):
  workdir = str(tmp_path / "w")
  train.train(tiny_config(steps=30, checkpoint_every=10), workdir)
  at30 = hashes(os.path.join(workdir, "checkpoints", "30"))
  _, before = leaves(workdir)
  proc = _train_cli(workdir, "--config.steps=60", "--config.checkpoint_every=10", fsize=4096)  # below the checkpoint's _METADATA
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"imgrec: error: writing a checkpoint in {workdir}/checkpoints failed: File too large" in proc.stderr
  assert f"step 30 ({workdir}/checkpoints/30) is intact" in proc.stderr and "Traceback" not in proc.stderr
  assert saved_steps(workdir) == [10, 20, 30] and hashes(os.path.join(workdir, "checkpoints", "30")) == at30
  step, after = leaves(workdir)
  assert step == 30
  for x, y in zip(before, after):
    np.testing.assert_array_equal(x, y)
  # Control: with space again, the same run resumes from step 30 and finishes (over the half-written step's files).
  train.train(tiny_config(steps=60, checkpoint_every=10), workdir)
  assert saved_steps(workdir) == [40, 50, 60]


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  proc = _train_cli(str(tmp_path / "w"), "--config.steps=2", fsize=100)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"imgrec: error: cannot write {tmp_path / 'w'}/config.json: File too large" in proc.stderr


# ---------------------------------------------------------------------------- one trainer per workdir

def test_a_locked_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "w")
  with resume.lock(workdir):
    with pytest.raises(UserError, match=rf"in use by another `imgrec train` \(pid {os.getpid()} on "):
      train.train(tiny_config(), workdir)
  assert not os.path.exists(workdir)  # the lock made the directory, and nothing was written in it: removed
  os.makedirs(workdir)
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  with open(os.path.join(workdir, resume.LOCK_FILE), "w") as f:  # left by a process killed -9: no flock on it
    json.dump({"pid": int(gone.stdout), "host": "elsewhere", "since": "then"}, f)
  with caplog.at_level("WARNING", logger="imgrec"), resume.lock(workdir):
    with open(os.path.join(workdir, resume.LOCK_FILE)) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert any(f"pid {int(gone.stdout)} on elsewhere" in r.getMessage() and "is gone" in r.getMessage()
             for r in caplog.records)


# ---------------------------------------------------------------------------- data that moved

def test_commands_on_a_run_whose_data_moved(tmp_path, capsys):
  ds = sources.load(config.defaults().data)  # digits, written as MNIST-format files
  (x, y), (tx, ty) = (ds.split(s).get(np.arange(len(ds.split(s)))) for s in ("train", "test"))
  old, new = str(tmp_path / "old"), str(tmp_path / "new")
  write_idx_dir(old, x[..., 0], y, tx[..., 0], ty)
  workdir = str(tmp_path / "w")
  cfg = tiny_config(data__source="mnist", data__dir=old)
  train.train(cfg, workdir)
  accuracy = evaluate.evaluate_workdir(workdir, report=False)["accuracy"]
  os.rename(old, new)
  capsys.readouterr()
  # Control: the run's own data.dir is gone.
  assert cli.main(["eval", "--workdir", workdir]) == 2
  assert f"data directory {old} for 'mnist' not found" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", workdir, f"--config.data.dir={new}", "--json"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == accuracy
  assert cli.main(["robustness", "--workdir", workdir, f"--config.data.dir={new}", "--corruptions=",
                   "--epsilons=", "--limit=64"]) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", workdir, "--config.optim.lr=1.0"]) == 2
  assert "--config.optim.lr is refused" in capsys.readouterr().err
  random_idx_dir(str(tmp_path / "other"))  # other data at the new place: refused, naming what differs
  assert cli.main(["eval", "--workdir", workdir, f"--config.data.dir={tmp_path / 'other'}"]) == 2
  assert "image_shape [8, 8, 1] -> [10, 10, 1]" in capsys.readouterr().err
  # Training resumes from the moved data when it is the same data, and refuses other data there.
  train.train(tiny_config(data__source="mnist", data__dir=new, steps=70), workdir)
  assert f"data.dir '{old}' -> '{new}'" in capsys.readouterr().out and saved_steps(workdir)[-1] == 70
  with pytest.raises(UserError, match="the data .dataset.json.: image_shape"):
    train.train(tiny_config(data__source="mnist", data__dir=str(tmp_path / "other"), steps=70), workdir)
