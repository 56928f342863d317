"""Hyper-parameter search on Optuna: every trial is an ordinary `imgrec train` workdir.

  imgrec sweep --config C --study DIR --trials N --space 'optim.lr=loguniform(1e-4,1e-1)' ...

The study lives in Optuna's relational storage (default `sqlite:///DIR/study.db`). Everything that
makes a sweep survive and scale is Optuna's:
  - a trial's sweep process sends heartbeats; a trial whose heartbeat stops (the process was
    killed, the machine died) is marked failed by the next sweep process, and
    `RetryHeartbeatStaleTrialCallback` queues it again with the same parameters. The retry trains
    in the killed trial's workdir (`DIR/trial-N`, N the original number), so it resumes from its
    last checkpoint;
  - any number of sweep processes, on one machine or several, given the same storage URL (and a
    shared DIR) take trials from the one study.
`--trials N` is the number of finished (complete or pruned) trials the study should reach, across
all processes. Each trial runs `python -m imgrec train` in its own process group (killed with the
sweep; stopped by SIGTERM when pruned), and is read through its metrics.jsonl: every validation
record is reported to Optuna as it appears, so the pruner can stop a trial early. A trial's value
is its best validation metric (the checkpoint the trainer selects).
"""
import ast
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings

import matplotlib.pyplot as plt  # Optuna's figures are drawn through pyplot
import optuna
import tqdm
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from imgrec import config as config_lib, models, tasks, workdir as wd
from imgrec.errors import UserError

DISTRIBUTIONS = ("loguniform(LOW,HIGH)", "uniform(LOW,HIGH)", "int(LOW,HIGH)", "logint(LOW,HIGH)", "choice(A,B,...)")
PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner, "halving": optuna.pruners.SuccessiveHalvingPruner}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 0.5
MAX_RETRY = 3  # a trial killed this often is given up
MAX_FAILURES_IN_A_ROW = 3


class TrialFailed(Exception):
  """`imgrec train` failed (diverged, crashed): the trial is marked failed and the sweep goes on."""


def parse_space(text):
  """'KEY=FN(ARGS)' -> (KEY, optuna distribution)."""
  key, eq, expr = text.partition("=")
  key, expr = key.strip(), expr.strip()
  fail = lambda why: UserError(f"--space {text!r}: {why}; write KEY=DIST with DIST one of {', '.join(DISTRIBUTIONS)}, "
                               "e.g. 'optim.lr=loguniform(1e-4,1e-1)'")
  if not eq or not key:
    raise fail("no KEY=")
  try:
    call = ast.parse(expr, mode="eval").body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.keywords:
      raise ValueError
    name, args = call.func.id, [ast.literal_eval(a) for a in call.args]
  except (SyntaxError, ValueError):
    raise fail(f"{expr!r} is not a distribution") from None
  numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
  if name in ("loguniform", "uniform", "int", "logint"):
    if len(args) != 2 or not numbers or not args[0] < args[1]:
      raise fail(f"{name} takes two numbers LOW < HIGH")
    if name.startswith("log") and args[0] <= 0:
      raise fail(f"{name} needs LOW > 0")
    if name in ("int", "logint"):
      if not all(isinstance(a, int) for a in args):
        raise fail(f"{name} takes two integers")
      return key, optuna.distributions.IntDistribution(args[0], args[1], log=name == "logint")
    return key, optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=name == "loguniform")
  if name == "choice":
    if len(args) < 2 or len(set(map(repr, args))) != len(args):
      raise fail("choice takes two or more different values")
    # Optuna stores bool/int/float/str choices; others (tuples) go in as their Python text.
    plain = all(isinstance(a, (bool, int, float, str)) for a in args)
    return key, optuna.distributions.CategoricalDistribution(args if plain else [repr(a) for a in args])
  raise fail(f"unknown distribution {name!r}")


def override_text(key, value):
  """The `--config.KEY=VALUE` text (without --config.) that sets a sampled value; choices stored as
  text (tuples) are that text already."""
  return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def check(config, fixed, space, metric):
  """Fails fast, naming the culprit, on what would make every trial fail. Returns the metric (""): the task's
  default selection metric on val)."""
  cfg = config_lib.load(config)
  config_lib.override(cfg, fixed)
  for text, (key, dist) in space:
    sample = dist.choices[0] if hasattr(dist, "choices") else dist.low
    try:
      config_lib.override(cfg, [override_text(key, sample)])
      models.create(cfg.model.name, 2, **cfg.model.kwargs.to_dict())  # model.kwargs keys are the model's to check
    except UserError as e:
      raise UserError(f"--space {text!r}: {e}") from None
  config_lib.validate(cfg)
  task = tasks.get(cfg.task)
  metric = metric or f"val.{cfg.select_metric}"
  split, _, key = metric.partition(".")
  if split != "val" or key not in task.RECORD or key == "examples":  # a metric the task's evaluations record
    raise UserError(f"--metric {metric!r}: use " + " or ".join(f"val.{m}" for m in task.SELECT) +
                    " (hyper-parameters are chosen on the validation split, never on test)")
  if cfg.data.val_fraction <= 0:
    raise UserError(f"--metric {metric} is measured on a validation split, and this config holds none out: "
                    "add --config.data.val_fraction=0.1 (or set it in the config file)")
  return metric


@contextlib.contextmanager
def _quiet_experimental():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    yield


def open_study(study_dir, storage, name, direction, pruner, sampler, heartbeat, definition):
  """Creates or loads the study; a study made with other settings is refused."""
  os.makedirs(study_dir, exist_ok=True)
  storage = storage or f"sqlite:///{os.path.abspath(os.path.join(study_dir, 'study.db'))}"
  # SQLite lets one writer in at a time: processes sharing it wait for the lock instead of failing.
  engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
  with _quiet_experimental():
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
  study = optuna.create_study(storage=rdb, study_name=name, direction=direction, pruner=pruner,
                              sampler=sampler, load_if_exists=True)
  saved = study.user_attrs.get("sweep")
  if saved is None:
    study.set_user_attr("sweep", definition)
  elif saved != definition:
    diff = ", ".join(f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in definition.items() if saved.get(k) != v)
    raise UserError(f"study {name!r} in {storage} was started with other settings ({diff}); "
                    "rerun with the same options, or give a new --study")
  return study


_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None  # loaded before any fork


def _die_with_parent():
  """In the trial's process, before exec: SIGKILL it when the sweep dies, even by SIGKILL (Linux)."""
  if _LIBC is not None:
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(proc):
  """Ends a trial's whole process group: SIGTERM, then SIGKILL."""
  if proc.poll() is not None:
    return
  for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, sig)
    try:
      proc.wait(wait)
      return
    except subprocess.TimeoutExpired:
      pass


def train_command(config, workdir, overrides):
  return [sys.executable, "-m", "imgrec", "train", *(["--config", config] if config else []), "--workdir", workdir,
          *(f"--config.{o}" for o in overrides)]


class Sweep:
  """One sweep process: runs trials of `study` until it has `n_trials` finished ones."""

  def __init__(self, study, study_dir, config, fixed, space, metric, n_trials, heartbeat):
    self.study, self.dir, self.config, self.fixed, self.space = study, study_dir, config, fixed, space
    self.metric, self.n_trials, self.heartbeat = metric, n_trials, heartbeat
    self.split, self.key = metric.split(".")
    self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    self.bar, self.current = None, None  # the trial this process runs

  def objective(self, trial):
    params = {}
    for _, (key, dist) in self.space:
      if isinstance(dist, optuna.distributions.CategoricalDistribution):
        params[key] = trial.suggest_categorical(key, dist.choices)
      elif isinstance(dist, optuna.distributions.IntDistribution):
        params[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
      else:
        params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    self.current = trial.number
    trials = self.study.get_trials(deepcopy=False)
    # Two processes may start trials at once when one is left to run: the lower numbers win.
    ahead = [t for t in trials if t.number < trial.number and t.state in (*FINISHED, TrialState.RUNNING,
                                                                          TrialState.WAITING)]
    if len(ahead) >= self.n_trials:
      trial.set_user_attr("surplus", True)
      return self._fail(trial, f"not run: {self.n_trials} trials were under way or done when it started")
    frozen = next(t for t in trials if t.number == trial.number)
    with _quiet_experimental():
      origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    workdir = os.path.join(self.dir, f"trial-{trial.number if origin is None else origin}")
    overrides = [*self.fixed, *(override_text(k, v) for k, v in params.items())]
    trial.set_user_attr("workdir", workdir)
    trial.set_user_attr("overrides", overrides)
    os.makedirs(workdir, exist_ok=True)
    note = f" (retry of trial {origin}, resuming its workdir)" if origin is not None else ""
    self.bar.write(f"trial {trial.number}{note}: {' '.join(overrides[len(self.fixed):])}")
    start = time.perf_counter()
    with open(os.path.join(workdir, "train.log"), "ab") as log:
      proc = subprocess.Popen(train_command(self.config, workdir, overrides), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
      try:
        rc = self._follow(trial, proc, workdir)
      finally:  # finished, pruned or interrupted: the trial's processes end with it
        _stop(proc)
        records = wd.read_metrics(workdir)
        trial.set_user_attr("steps", max((r["step"] for r in records if r["split"] == "train"), default=0))
        trial.set_user_attr("wall_s", time.perf_counter() - start)
    if rc != 0:
      with open(os.path.join(workdir, "train.log"), "rb") as f:
        last = (f.read()[-4000:].decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
      return self._fail(trial, f"imgrec train exited with {rc}: {last[-300:]} (log: {workdir}/train.log)")
    values = [r[self.key] for r in records if r["split"] == self.split]
    if not values:
      return self._fail(trial, f"no {self.metric} in {workdir}/metrics.jsonl")
    return max(values) if self.maximize else min(values)

  @staticmethod
  def _fail(trial, why):
    trial.set_user_attr("error", why)
    raise TrialFailed(why)

  def _follow(self, trial, proc, workdir):
    """Reports the trial's validation records as they appear; returns its exit code. Raises TrialPruned."""
    reported = set()
    while True:
      rc = proc.poll()
      for r in wd.read_metrics(workdir):
        if r["split"] == self.split and r["step"] not in reported:
          reported.add(r["step"])
          trial.report(r[self.key], r["step"])
          if trial.should_prune():
            _stop(proc)
            trial.set_user_attr("pruned_at", r["step"])
            raise optuna.TrialPruned(f"{self.metric} {r[self.key]:.4f} at step {r['step']}")
      if rc is not None:
        return rc
      time.sleep(POLL_S)

  def run(self):
    """Runs trials until the study has `n_trials` finished ones. A trial running in another process counts
    as under way; if that process dies, its trial comes back (heartbeat) and is run here."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    self.bar = tqdm.tqdm(total=self.n_trials, desc="sweep", unit="trial", dynamic_ncols=True)
    failures = 0
    try:
      while True:
        trials = self.study.get_trials(deepcopy=False)
        count = lambda *states: sum(t.state in states for t in trials)
        finished = count(*FINISHED)
        self.bar.n = min(finished, self.n_trials)
        self.bar.refresh()
        if finished >= self.n_trials:
          return
        if finished + count(TrialState.RUNNING) >= self.n_trials and not count(TrialState.WAITING):
          with _quiet_experimental():
            optuna.storages.fail_stale_trials(self.study)
          time.sleep(self.heartbeat)
          continue
        self.current = None
        try:
          self.study.optimize(self.objective, n_trials=1, catch=(TrialFailed,))
        except KeyboardInterrupt:  # Optuna marked the trial failed: queue it again, as for a dead process's
          last = self._last()
          if last is not None and last.state == TrialState.FAIL:
            with _quiet_experimental():
              RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(self.study, last)
          raise
        last = self._last()
        if last is not None:
          self._announce(last)
          failures = failures + 1 if last.state == TrialState.FAIL and not last.user_attrs.get("surplus") else 0
          if failures >= MAX_FAILURES_IN_A_ROW:
            raise UserError(f"{failures} trials in a row failed; the last: {last.user_attrs.get('error', '?')}")
    finally:
      self.bar.close()

  def _last(self):
    """The trial this process ran last, as stored."""
    if self.current is None:
      return None
    return next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.current)

  def _announce(self, t):
    value = f"{self.metric} {t.value:.4f}" if t.value is not None else t.state.name.lower()
    best = ""
    with contextlib.suppress(ValueError):
      best = f"; best {self.study.best_value:.4f} (trial {self.study.best_trial.number})"
    self.bar.write(f"trial {t.number} {t.state.name.lower()}: {value}, {t.user_attrs.get('steps', 0)} steps, "
                   f"{t.user_attrs.get('wall_s', 0):.0f} s{best}")


def _save(axes, path):
  fig = (axes.ravel()[0] if hasattr(axes, "ravel") else axes).figure
  fig.savefig(path + ".tmp.png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  os.replace(path + ".tmp.png", path)  # another sweep process may be writing the same file


def _fmt(v):
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_results(study, study_dir, config, metric):
  """DIR/results.md (a table of the finished trials and the best as an `imgrec train` command) and
  its PNGs: the metric against each searched parameter, the optimisation history, the learning curves."""
  trials = study.get_trials(deepcopy=False)
  done = [t for t in trials if t.state in FINISHED]
  failed = [t for t in trials if t.state == TrialState.FAIL]
  keys = sorted({k for t in done for k in t.params})
  n_pruned = sum(t.state == TrialState.PRUNED for t in done)
  starts = [t.datetime_start for t in done if t.datetime_start]
  ends = [t.datetime_complete for t in done if t.datetime_complete]
  wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
  lines = [f"# Sweep `{study.study_name}`", "",
           f"{len(done)} finished trials ({len(done) - n_pruned} complete, {n_pruned} pruned), {len(failed)} failed "
           f"(killed and retried, diverged, or not started); {wall:.0f} s from the first start to the last end.",
           f"A trial's {metric} is its best over its evaluations ({study.direction.name.lower()}); "
           "a pruned trial's is its last reported one.", "",
           "| trial | state | " + " | ".join(f"`{k}`" for k in keys) + f" | {metric} | steps | wall s |",
           "|---:|---|" + "---:|" * len(keys) + "---:|---:|---:|"]
  for t in sorted(done, key=lambda t: t.number):
    value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                 if t.intermediate_values else float("nan"))
    lines.append(f"| {t.number} | {t.state.name.lower()} | " + " | ".join(_fmt(t.params.get(k, "")) for k in keys)
                 + f" | {value:.4f} | {t.user_attrs.get('steps', 0)} | {t.user_attrs.get('wall_s', 0):.0f} |")
  complete = [t for t in done if t.state == TrialState.COMPLETE]
  if complete:
    best = study.best_trial
    command = ["imgrec", "train", *(["--config", config] if config else []), "--workdir", "runs/best",
               *(f"--config.{o}" for o in best.user_attrs["overrides"])]
    lines += ["", f"Best: trial {best.number}, {metric} {best.value:.4f} (workdir `{best.user_attrs['workdir']}`). "
              "Train it again with:", "", "```", " ".join(map(shlex.quote, command)), "```", "",
              "![metric against each parameter](params.png)", "", "![optimisation history](history.png)", "",
              "![validation curves](curves.png)"]
    with _quiet_experimental(), warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # matplotlib's note on tight layouts of many panels
      vis = optuna.visualization.matplotlib
      _save(vis.plot_slice(study, params=keys, target_name=metric), os.path.join(study_dir, "params.png"))
      _save(vis.plot_optimization_history(study, target_name=metric), os.path.join(study_dir, "history.png"))
      _save(vis.plot_intermediate_values(study), os.path.join(study_dir, "curves.png"))
  path = os.path.join(study_dir, "results.md")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  return path


def sweep(config, fixed, space_texts, study_dir, n_trials, storage=None, study_name=None, metric="",
          direction=None, pruner="median", sampler="tpe", heartbeat=10):
  """Runs (or joins, or continues) a sweep; returns the path of its results.md."""
  if n_trials < 1:
    raise UserError(f"--trials must be at least 1, got {n_trials}")
  if heartbeat < 1:
    raise UserError(f"--heartbeat is in whole seconds, at least 1; got {heartbeat}")
  if not space_texts:
    raise UserError("give at least one --space KEY=DIST, e.g. --space 'optim.lr=loguniform(1e-4,1e-1)'")
  space = [(text, parse_space(text)) for text in space_texts]
  keys = [key for _, (key, _) in space]
  if len(set(keys)) != len(keys):
    raise UserError(f"--space names a key twice: {', '.join(sorted(k for k in set(keys) if keys.count(k) > 1))}")
  metric = check(config, fixed, space, metric)
  direction = direction or ("minimize" if metric.endswith("loss") else "maximize")
  if pruner not in PRUNERS:
    raise UserError(f"--pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
  if sampler == "grid":
    if not all(isinstance(d, optuna.distributions.CategoricalDistribution) for _, (_, d) in space):
      raise UserError("--sampler grid needs every --space to be a choice(...)")
    sampler_obj = optuna.samplers.GridSampler({k: d.choices for _, (k, d) in space})
  elif sampler in ("tpe", "random"):
    # No seed: a rerun must not draw the same parameters again.
    sampler_obj = optuna.samplers.TPESampler() if sampler == "tpe" else optuna.samplers.RandomSampler()
  else:
    raise UserError(f"--sampler {sampler!r}: use tpe, random or grid")
  definition = {"config": config or "", "fixed": list(fixed), "space": list(space_texts), "metric": metric,
                "direction": direction}
  study = open_study(study_dir, storage, study_name or os.path.basename(os.path.abspath(study_dir)), direction,
                     PRUNERS[pruner](), sampler_obj, heartbeat, definition)
  try:
    Sweep(study, study_dir, config, list(fixed), space, metric, n_trials, heartbeat).run()
  finally:
    path = write_results(study, study_dir, config, metric)
  return path
