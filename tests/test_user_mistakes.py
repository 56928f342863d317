"""The README's promise for user mistakes, through the real command: each mistake is one line on stderr, exit
code 2, no traceback, and nothing written. The cases run in this process through `cli.main` (what
`python -m imgrec` calls), so the table costs one JAX import, not one per case; one case runs the real
command in a subprocess as a control that the in-process capture sees what a user sees."""
import os
import subprocess
import sys

import pytest

from imgrec import cli, config, files, workdir as wd
from imgrec.errors import UserError
from tests.helpers import ROOT, hashes, photo_folder


def truncated_run(path):
  """A directory holding a config.json cut short mid-write (as a kill during a non-atomic write left it)."""
  os.makedirs(path)
  with open(os.path.join(path, wd.CONFIG_FILE), "w") as f:
    f.write('{\n  "batch_size": 32,\n  "data": {\n    "aug')
  return path


def lone_val_folder(path):
  photo_folder(os.path.join(path, "val"), n=6, classes=2)
  return path


# (arguments with {w}: a fresh workdir, {t}: a trained run, {x}: a prepared path; what the message names;
# the prepared path's maker)
CASES = [
    (["train", "--workdir", "{w}", "--config.seed.x=1"], "'seed' is a value, not a section", None),
    (["train", "--workdir", "{w}", "--config", "configs/fashion_mnist_resnet.py:quick=maybe"],
     "bad value 'maybe' for config argument 'quick'", None),
    (["train", "--workdir", "{w}", "--config.log_every=0"], "log_every must be an integer >= 1", None),
    (["train", "--workdir", "{w}", "--config.keep_checkpoints=0"], "keep_checkpoints must be an integer >= 1", None),
    (["train", "--workdir", "{w}", "--config.eval_every=-1"], "eval_every must be an integer >= 0", None),
    (["train", "--workdir", "{w}", "--config.checkpoint_every=-5"], "checkpoint_every must be", None),
    (["train", "--workdir", "{w}", "--config.steps=-3"], "set epochs > 0 or steps > 0", None),
    (["train", "--workdir", "{w}", "--config.optim.no_decay=(bias"], "optim.no_decay '(bias' is not a valid", None),
    (["train", "--workdir", "{w}", "--config.optim.freeze=[conv"], "optim.freeze '[conv' is not a valid", None),
    (["train", "--workdir", "{w}", "--config.transfer.reinit=*head"], "transfer.reinit '*head' is not a valid", None),
    (["train", "--workdir", "{w}", "--config.transfer.lr_mults=(('(x', 2.0),)"], "lr_mults[0] '(x' is not", None),
    (["train", "--workdir", "{w}", "--config.data.image_size=-1"], "data.image_size must be an integer >= 0", None),
    (["train", "--workdir", "{w}", "--config.data.workers=4"], "data.workers=4 set, but only folder:, tfds: sources decode images", None),
    (["train", "--workdir", "{w}", "--config.data.stats_examples=10", "--config.data.channels=3"],
     "data.channels=3, data.stats_examples=10 set", None),
    (["train", "--workdir", "{w}", "--config.data.source=folder:{x}"], "holds only val/ and no train/",
     lone_val_folder),
    (["train", "--workdir", "{x}"], "config.json is not valid JSON", truncated_run),
    (["eval", "--workdir", "{x}"], "config.json is not valid JSON", truncated_run),
    (["serve", "--workdir", "{t}", "--batch-sizes", "a,b"], "--batch-sizes 'a,b': 'a' is not valid", None),
    (["serve", "--workdir", "{t}", "--batch-sizes", "8,0"], "'0' is not valid; give positive integers", None),
    (["serve", "--workdir", "{x}"], "config.json is not valid JSON", truncated_run),  # not a 503 forever
    (["serve"], "nothing to serve: give --workdir W", None),
    (["serve", "--model-repository", "{w}"], "is not a folder; give DIR holding DIR/NAME/VERSION/", None),
    (["serve", "--workdir", "{t}", "--memory-budget", "lots"], "--memory-budget 'lots'", None),
    (["serve", "--workdir", "x..y={t}"], "model name 'x..y' is not usable in a URL", None),
    (["export", "--workdir", "{t}", "--out", "{w}/m.zip", "--platforms", "cpu,foo"],
     "--platforms 'cpu,foo': 'foo' is not valid; give one of cpu, cuda, rocm, tpu", None),
    (["robustness", "--workdir", "{t}", "--epsilons", "1,x"], "--epsilons (in 1/255 units) '1,x'", None),
    (["compress", "--workdir", "{t}", "--method", "channels", "--out", "{t}"], "already holds a run", None),
    (["compress", "--workdir", "{t}", "--method", "prune", "--out", "{t}"], "already holds a run", None),
    (["compress", "--workdir", "{t}", "--method", "int8", "--out", "{t}/config.json"], "never overwrites a file",
     None),
    (["import-torchvision", "resnet18", "{w}.pth", "--workdir", "{t}"], "already holds a run", None),
]


def test_each_mistake_is_one_line_exit_2_and_writes_nothing(trained_workdir, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  trained = hashes(trained_workdir)
  failed = []
  for i, (args, message, make) in enumerate(CASES):
    w, x = str(tmp_path / f"w{i}"), str(tmp_path / f"x{i}")
    if make:
      make(x)
    before = hashes(x) if make else None
    argv = [a.format(w=w, t=trained_workdir, x=x) for a in args]
    try:
      code = cli.main(argv)
    except BaseException as e:  # a traceback for the user: recorded, the other cases still run
      failed.append(f"{' '.join(argv)}: raised {type(e).__name__}: {e}")
      continue
    err = capsys.readouterr().err.strip().splitlines()
    if code != 2 or len(err) != 1 or not err[0].startswith("imgrec: error:") or message not in err[0]:
      failed.append(f"{' '.join(argv)}: exit {code}, stderr {err[-3:]}")
    if os.path.exists(w):
      failed.append(f"{' '.join(argv)}: wrote {w}: {sorted(os.listdir(w))}")
    if make and hashes(x) != before:
      failed.append(f"{' '.join(argv)}: changed {x}")
  assert hashes(trained_workdir) == trained, "a refused command changed the trained run"
  assert not failed, "\n".join(failed)


def test_the_real_command_shows_the_same_one_line(tmp_path):
  """Control for the in-process table: the console command itself, in a fresh interpreter."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "imgrec", "train", "--workdir", str(tmp_path / "w"),
                         "--config.seed.x=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      "imgrec: error: config key 'seed' is a value, not a section: override it as --config.seed=VALUE"]
  assert not os.path.exists(tmp_path / "w")


def test_run_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
  """A write that fails before its rename (here the disk fills at fsync) leaves the previous config.json byte for
  byte, and no temporary file behind."""
  path = str(tmp_path / wd.CONFIG_FILE)
  cfg = config.defaults()
  config.save(cfg, path)
  with open(path, "rb") as f:
    old = f.read()
  cfg.seed = 7

  def full_disk(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(files.os, "fsync", full_disk)
  with pytest.raises(UserError, match=f"cannot write {path}: No space left on device"):
    config.save(cfg, path)
  with open(path, "rb") as f:
    assert f.read() == old
  assert os.listdir(tmp_path) == [wd.CONFIG_FILE]
  monkeypatch.undo()
  config.save(cfg, path)  # control: the same write succeeds once the disk has room
  assert config.load_saved(path).seed == 7
