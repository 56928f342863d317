"""What happens when `imgrec train` starts in a workdir that may already hold a run.

  prepare(W, cfg, info[, restart])  the resume guard: compares the new config and data with W/config.json and
      W/dataset.json before anything is written (the trainer writes its config.json after restoring). A change to what defines the run is refused, listing each key
      as `old -> new`; a longer run, and keys that only observe it, are accepted and logged. `KEYS` is the one
      table of which key is which. `restart` moves the old run to W/previous-<timestamp>/ instead (never deletes).
  lock(W)  one trainer per workdir: W/train.lock names the holder (pid, host); a lock left by a process that is
      gone is taken over with a warning.

More epochs or steps: the lr schedule's length is part of the run, so it is recomputed for the new length and
followed from the resumed step on: the continuation runs the schedule of a run that had the new length from the
start, and ends where that run ends (step, lr). The steps already trained keep the old schedule, so the weights
equal that run's only for a schedule that does not depend on the length (constant, step, warm-up then constant).
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import time

from imgrec import config as config_lib, parallel, tasks, workdir as wd
from imgrec.errors import UserError

log = logging.getLogger("imgrec")
LOCK_FILE = "train.lock"

# What a changed config key means for the run already in a workdir: one explicit entry per shared key of
# config.defaults() (tests/test_resume.py fails on a key missing here), and every task's keys by its MAY_CHANGE;
# a free section (model.kwargs, optim.kwargs) is one entry for every key under it. A key missing here is refused,
# to be safe.
RUN = "defines the run"  # refused: the checkpoints, curves and schedule belong to the old value
LENGTH = "length"        # accepted when the run gets no shorter; the lr schedule then spans the new length
LOCATION = "location"    # where the data is read from: accepted when it is the same data (dataset.json unchanged)
OBSERVE = "observe"      # how the run is logged, evaluated, saved, read or placed on devices: accepted, logged
KEYS = {
    "seed": RUN, "task": RUN, "batch_size": RUN, "epochs": LENGTH, "steps": LENGTH,
    **dict.fromkeys(("data.source", "data.dir"), LOCATION),
    **dict.fromkeys(("data.image_size", "data.test_fraction", "data.train_split", "data.eval_split", "data.augment",
                     "data.val_fraction"), RUN),
    **dict.fromkeys(("data.pp_train", "data.pp_eval", "data.channels"), RUN),  # what the model sees
    **dict.fromkeys(("data.norm", "data.mean", "data.std", "data.stats_examples"), RUN),  # its normalisation
    "data.prefetch": OBSERVE, "data.workers": OBSERVE,  # how fast batches come, not which
    "data.on_bad_image": OBSERVE,  # turning skipping on is how a run that met a broken file resumes
    **dict.fromkeys(("model.name", "model.kwargs", "model.dtype"), RUN),
    **dict.fromkeys(("optim." + k for k in (
        "name", "kwargs", "lr", "momentum", "nesterov", "weight_decay", "no_decay", "l2", "l1", "freeze", "schedule",
        "warmup_epochs", "warmup_steps", "decay_epochs", "decay_factor", "grad_clip", "label_smoothing", "ema_decay",
        "accum_steps", "prune_sparsity", "prune_every")), RUN),
    "select_metric": RUN, "early_stop_patience": RUN,  # which checkpoint is "best", and when the run ends
    **dict.fromkeys(("transfer.init_from", "transfer.reinit", "transfer.prefix", "transfer.lr_mults"), RUN),
    **dict.fromkeys(("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "compile_cache",
                     "profile"), OBSERVE),
    # Placement: checkpoints restore into any sharding, and FSDP computes data parallel's numbers.
    **dict.fromkeys(("parallel.coordinator_address", "parallel.num_processes", "parallel.process_id",
                     "parallel.fsdp", "parallel.fsdp_min_size"), OBSERVE),
    # Each task's own keys (its settings()): they define the run, but for those it says may change (MAY_CHANGE).
    **{key: OBSERVE if key in task.MAY_CHANGE else RUN
       for task in tasks.TASKS.values() for key in config_lib.task_keys(task)},
}
_UNSET = object()  # a key one of the two configs lacks


def rule(key):
  """KEYS' rule for a dotted key (a key under a free section takes the section's), or None."""
  while key:
    if key in KEYS:
      return KEYS[key]
    key = key.rpartition(".")[0]
  return None


def config_leaves(cfg, prefix=""):
  """{"optim.lr": value, ...}: every leaf of a config, JSON-normalised (tuples as lists)."""
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(config_leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=repr))
  return out


def _short(value, n=60):
  """repr(value), long lists cut short (strings, like paths, are given whole)."""
  text = "(unset)" if value is _UNSET else repr(value)
  return text if len(text) <= n or isinstance(value, str) else text[:n - 3] + "..."


def changes(old, new):
  """{key: (old value, new value)} for every leaf that differs (`_UNSET` where one config lacks the key)."""
  a, b = config_leaves(old), config_leaves(new)
  pairs = {k: (a.get(k, _UNSET), b.get(k, _UNSET)) for k in sorted(set(a) | set(b))}
  return {k: (x, y) for k, (x, y) in pairs.items() if x is not y and x != y}


def check(workdir, cfg, info):
  """Compares `cfg` and the data's `info` with the run in `workdir` (its config.json and dataset.json).
  Returns the accepted changes as log lines; raises a UserError listing each refused one as `old -> new`."""
  old = config_lib.load_saved(os.path.join(workdir, wd.CONFIG_FILE))
  old_info = wd.read_info(workdir) if os.path.isfile(os.path.join(workdir, wd.INFO_FILE)) else info
  refused, accepted, length, location = [], [], [], []
  for key, (a, b) in changes(old, cfg).items():
    kind, change = rule(key), f"{key} {_short(a)} -> {_short(b)}"
    if kind == OBSERVE:
      accepted.append(change)
    elif kind in (LENGTH, LOCATION):
      (length if kind == LENGTH else location).append(change)
    else:
      refused.append(change if kind else f"{change} (a key missing from resume.KEYS)")
  if length:
    before = wd.schedule_lengths(old, old_info["num_train"])[1]
    after = wd.schedule_lengths(cfg, info["num_train"])[1]
    if after < before:
      refused.append(f"{', '.join(length)} (shortens the run from {before} to {after} steps)")
    else:
      accepted.append(f"{', '.join(length)}: the run ends at step {after} (was {before}); the lr schedule is "
                      f"recomputed for {after} steps and followed from the resumed step on")
  data = [f"{k} {_short(old_info.get(k))} -> {_short(info.get(k))}" for k in sorted(set(old_info) | set(info))
          if k != "source" and old_info.get(k) != info.get(k)]
  if data:
    refused.append(f"{'; '.join(location + [''])}the data ({wd.INFO_FILE}): {'; '.join(data)}")
  else:
    accepted += [f"{c} (the same data)" for c in location]
  if refused:
    raise UserError(f"{workdir} holds another run; refusing to change: {'; '.join(refused)}. Nothing was written. "
                    "Train into a new --workdir, or add --restart to move the old run to "
                    f"{os.path.join(workdir, 'previous-<timestamp>')}/ and start over")
  return [f"resuming {workdir} with changes: {'; '.join(accepted)}"] if accepted else []


def set_aside_dir(workdir, prefix):
  """A new, unused W/{prefix}-{timestamp} path."""
  base = os.path.join(workdir, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, n = base, 1
  while os.path.exists(path):
    path, n = f"{base}-{n}", n + 1
  return path


def move_aside(workdir):
  """--restart: moves the run in `workdir` into W/previous-<timestamp>/ (deleting nothing); returns that
  directory, or None when there was nothing to move. Only a directory holding an imgrec run (its config.json) is
  touched, and only the run's own files (`workdir.RUN_FILES` and earlier damaged-*/ copies): whatever else
  lives there (a repository, data, notes) stays where it is."""
  if not os.path.isfile(os.path.join(workdir, wd.CONFIG_FILE)):
    return None
  names = [n for n in sorted(os.listdir(workdir)) if n in wd.RUN_FILES or n.startswith("damaged-")]
  dest = set_aside_dir(workdir, "previous")
  with wd.writing(dest):
    os.makedirs(dest)
    for name in names:
      os.rename(os.path.join(workdir, name), os.path.join(dest, name))
  return dest


def prepare(workdir, cfg, info, restart=False, is_main=True):
  """The resume guard, run before anything is written to `workdir`: refuses `cfg` when it would change the run
  already there (`check`); with `restart`, moves that run aside instead (the main process does). Writes nothing
  else: the caller writes config.json once the checkpoint is restored. Returns lines to log."""
  lines = []
  if restart:
    dest = move_aside(workdir) if is_main and os.path.isdir(workdir) else None
    lines += [f"--restart: moved the previous run in {workdir} to {dest}/"] if dest else []
  elif os.path.isfile(os.path.join(workdir, wd.CONFIG_FILE)):
    lines += check(workdir, cfg, info)
  parallel.sync("imgrec-prepared")  # the other processes restore only after the main one moved the old run
  return lines


# ---------------------------------------------------------------------------- one trainer per workdir

def _read_holder(fd):
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except (OSError, ValueError):
    return {}


def _holder_text(h):
  return (f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')}" if h
          else "a process that has not written its name yet")


@contextlib.contextmanager
def lock(workdir, enabled=True):
  """Holds W/train.lock while training in W: an exclusive flock on a file naming the holder (pid, host). A
  second trainer on W gets a UserError naming the holder. A lock file whose flock is free was left by a process
  that is gone (the kernel drops a dead process's flock, kill -9 included): it is taken over with a warning."""
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  created = not os.path.isdir(workdir)  # removed again if the run fails before writing anything in it
  with wd.writing(workdir):
    os.makedirs(workdir, exist_ok=True)
  while True:
    with wd.writing(path):
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise UserError(f"{workdir} is in use by another `imgrec train` ({_holder_text(holder)}; lock {path}); wait "
                      "for it to finish or stop it, or train into another --workdir") from None
    try:
      current = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      current = False
    if current:
      break
    os.close(fd)  # the holder removed the file between our open and flock: take the new one
  old = _read_holder(fd)
  if old:
    log.warning("taking over %s: its holder (%s) is gone", path, _holder_text(old))
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  try:
    with wd.writing(path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(me).encode(), 0)
  except UserError:
    os.close(fd)
    raise
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)
    os.close(fd)
    if created:
      with contextlib.suppress(OSError):  # fails, as it should, once the run wrote anything
        os.rmdir(workdir)
