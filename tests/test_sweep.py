"""`imgrec sweep`: real trials (`imgrec train` subprocesses) on a real SQLite Optuna storage."""
import glob
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import ROOT
from imgrec import sweep
from imgrec.errors import UserError

FIXED = ["--config.steps=5", "--config.eval_every=1", "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.model.kwargs.widths=(8,16)", "--config.model.kwargs.hidden=32", "--config.batch_size=32",
         "--config.data.val_fraction=0.1", "--config.data.prefetch=0"]
SPACE = ["--space", "optim.lr=loguniform(1e-4,1e-1)", "--space", "optim.weight_decay=choice(0.0,1e-4)"]


def command(study, trials=3, *extra):
  return [sys.executable, "-m", "imgrec", "sweep", "--study", str(study), "--trials", str(trials), *SPACE, *FIXED,
          "--pruner", "none", "--heartbeat", "1", *extra]


def start(study, trials=3):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(command(study, trials), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def load(study):
  return optuna.load_study(study_name=os.path.basename(study), storage=f"sqlite:///{study}/study.db")


def trial_processes(study):
  """Live processes whose command line names the study (its trials' `imgrec train`)."""
  found = []
  for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
      with open(path, "rb") as f:
        args = f.read().split(b"\0")
    except OSError:  # gone meanwhile
      continue
    if b"train" in args and any(str(study).encode() in a for a in args):
      found.append(path)
  return found


def assert_trials_done_once(study, n):
  trials = load(study).get_trials()
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  assert len(complete) == n, [(t.number, t.state) for t in trials]
  configs = [tuple(sorted(t.params.items())) for t in complete]
  assert len(set(configs)) == n  # every trial's config distinct...
  for t in complete:  # ... and recorded: the overrides in the study, the full config in its workdir
    assert any(o.startswith("optim.lr=") for o in t.user_attrs["overrides"])
    assert os.path.isfile(os.path.join(t.user_attrs["workdir"], "config.json"))
  workdirs = [t.user_attrs["workdir"] for t in complete]
  assert len(set(workdirs)) == n
  for w in workdirs:  # trained from scratch once each (a retry resumes, it does not start over)
    with open(os.path.join(w, "train.log")) as f:
      assert f.read().count("from scratch") == 1, w
  return complete


@pytest.mark.slow
def test_three_trials_complete_with_results_and_plots(tmp_path):
  study = tmp_path / "s"
  out = finish(start(study))
  complete = assert_trials_done_once(study, 3)
  results = (study / "results.md").read_text()
  for name in ("params.png", "history.png", "curves.png"):
    assert (study / name).stat().st_size > 5000 and f"({name})" in results
  for t in complete:
    assert f"| {t.number} | complete |" in results and f"{t.value:.4f}" in results
    assert t.user_attrs["steps"] == 5 and len(t.intermediate_values) == 5  # a val record reported per step
  best = load(study).best_trial
  assert f"--config.optim.lr={best.params['optim.lr']!r}" in results and "imgrec train" in results
  assert f"results: {study}/results.md" in out


@pytest.mark.slow
def test_sweep_killed_mid_trial_continues_when_rerun(tmp_path):
  study = tmp_path / "s"
  proc = start(study)
  deadline = time.time() + 240
  while not (study / "trial-1" / "checkpoints" / "2").exists():  # trial 2 is training, past a checkpoint
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)  # the sweep only: its trial dies with it
  proc.communicate()
  deadline = time.time() + 10
  while trial_processes(study) and time.time() < deadline:
    time.sleep(0.2)
  assert not trial_processes(study), "the trial outlived its sweep"

  finish(start(study))
  complete = assert_trials_done_once(study, 3)
  trials = load(study).get_trials()
  killed, = [t for t in trials if t.state == TrialState.FAIL]
  assert killed.number == 1
  retry, = [t for t in complete if t.system_attrs.get("failed_trial") == 1]
  assert retry.params == killed.params and retry.user_attrs["workdir"].endswith("trial-1")
  with open(os.path.join(retry.user_attrs["workdir"], "train.log")) as f:
    assert "resuming at step" in f.read()  # from the killed trial's checkpoint


@pytest.mark.slow
def test_two_sweep_processes_share_one_study(tmp_path):
  study = tmp_path / "s"
  first = start(study, trials=4)
  time.sleep(3)  # the second joins the study the first created
  second = start(study, trials=4)
  outs = [finish(first), finish(second)]
  complete = assert_trials_done_once(study, 4)
  assert not [t for t in load(study).get_trials() if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
  ran = [[t.number for t in complete if f"trial {t.number}:" in out] for out in outs]
  assert ran[0] and ran[1] and sorted(ran[0] + ran[1]) == sorted(t.number for t in complete)  # shared, once each


@pytest.mark.parametrize("text, says", [
    ("optim.lr", "no KEY="), ("optim.lr=normal(0,1)", "unknown distribution 'normal'"),
    ("optim.lr=loguniform(0,1)", "LOW > 0"), ("optim.lr=uniform(2,1)", "LOW < HIGH"),
    ("optim.lr=choice(1)", "two or more"), ("optim.lr=loguniform(1e-4, x)", "is not a distribution"),
    ("model.kwargs.hidden=int(8.5,64)", "two integers")])
def test_bad_space_is_a_user_error_naming_it(text, says):
  with pytest.raises(UserError, match=r"--space '.*': .*" + says.replace("(", r"\(").replace(")", r"\)")):
    sweep.parse_space(text)


def test_space_keys_and_metric_are_checked_before_any_trial(tmp_path):
  fixed = ["data.val_fraction=0.1"]
  with pytest.raises(UserError, match=r"--space 'optim.lrr=uniform\(0,1\)': unknown config key 'optim.lrr'"):
    sweep.sweep(None, fixed, ["optim.lrr=uniform(0,1)"], str(tmp_path / "s"), 2)
  with pytest.raises(UserError, match=r"--space 'model.kwargs.widht=choice\(1,2\)': bad options for model"):
    sweep.sweep(None, fixed, ["model.kwargs.widht=choice(1,2)"], str(tmp_path / "s"), 2)
  with pytest.raises(UserError, match="holds none out: add --config.data.val_fraction=0.1"):
    sweep.sweep(None, [], ["optim.lr=uniform(0.001,0.01)"], str(tmp_path / "s"), 2)
  with pytest.raises(UserError, match="never on test"):
    sweep.sweep(None, fixed, ["optim.lr=uniform(0.001,0.01)"], str(tmp_path / "s"), 2, metric="test.accuracy")
  assert not (tmp_path / "s").exists()  # nothing was started


def test_tuple_choices_become_overrides_the_config_parses():
  key, dist = sweep.parse_space("model.kwargs.widths=choice((8,16),(16,32))")
  assert dist.choices == ("(8, 16)", "(16, 32)")
  assert sweep.override_text(key, dist.choices[1]) == "model.kwargs.widths=(16, 32)"
  assert sweep.override_text("optim.lr", 0.1 / 3) == f"optim.lr={0.1 / 3!r}"


def test_a_rerun_with_other_settings_is_refused(tmp_path):
  fixed = ["data.val_fraction=0.1"]
  sweep.open_study(str(tmp_path), None, "s", "maximize", None, None, 10, {"space": ["a"], "fixed": fixed})
  with pytest.raises(UserError, match="started with other settings"):
    sweep.open_study(str(tmp_path), None, "s", "maximize", None, None, 10, {"space": ["b"], "fixed": fixed})


def test_a_pruner_that_must_fire_stops_the_trial(tmp_path, monkeypatch):
  """The pruning path: each val record reported, `should_prune` asked, the trial's `imgrec train` stopped and the
  trial recorded as pruned. Optuna's ThresholdPruner with lower=2 fires at the first report (accuracy < 2)."""
  monkeypatch.setitem(sweep.PRUNERS, "always", lambda: optuna.pruners.ThresholdPruner(lower=2.0))
  study = tmp_path / "s"
  fixed = [a[len("--config."):] for a in FIXED if "steps=" not in a] + ["steps=3000"]  # long: it must be cut short
  path = sweep.sweep(None, fixed, ["optim.lr=loguniform(1e-4,1e-1)"], str(study), 1, pruner="always", heartbeat=1)
  (trial,) = load(study).get_trials()
  assert trial.state == TrialState.PRUNED, trial.state
  first = min(trial.intermediate_values)
  assert trial.user_attrs["pruned_at"] == first and trial.intermediate_values[first] < 2.0
  assert trial.user_attrs["steps"] < 3000  # stopped, not run to its end
  assert not os.path.isdir(os.path.join(trial.user_attrs["workdir"], "checkpoints", "3000"))
  assert trial_processes(study) == []
  assert "| 0 | pruned |" in open(path).read()
