"""The one place that touches Orbax: save, restore-latest with fallback, restore into a target sharding.

What can go wrong with a checkpoint falls into four kinds, each asking for something different:
  mismatched  its tree or shapes differ from the state the config builds: a UserError naming the differing
              paths (the config or the code changed). Never taken for damage, never skipped.
  unreadable  its files are truncated, missing or corrupt: a warning naming the path, and the previous one
              is tried. When checkpoints exist but none is readable, a UserError: a run never silently
              starts from scratch over them.
  failed      reading it failed for a reason outside its files (device out of memory, a transient or
              permission error of the filesystem): a UserError naming the cause; nothing is skipped or moved,
              since the checkpoint is likely intact and a rerun reads it. Only what `is_damage` recognises
              as damage counts as unreadable.
  unwritable  a save failed (disk full, read-only): a UserError naming the directory. The checkpoints
              already there stay intact: Orbax writes into a temporary directory and renames it when complete.
Orbax never overwrites a step (it declines any step at or below the newest one); `save` makes that an error.
"""
import contextlib
import json
import logging
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from imgrec.errors import UserError

log = logging.getLogger("imgrec")
ITEM = "default"  # the item directory of a single-item CheckpointManager: W/checkpoints/N/default
MAX_LISTED = 6  # differing paths named in a mismatch error


def manager(workdir, keep=3, subdir="checkpoints"):
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, subdir)),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def step_dir(mngr, step):
  return os.path.join(str(mngr.directory), str(step))


def _reason(e):
  """A one-line reason for an Orbax/TensorStore error; the OS error by name when it carries one."""
  text = str(e)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
  text = text.splitlines()[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _unwritable(mngr, e):
  latest = mngr.latest_step()
  kept = f"step {latest} ({step_dir(mngr, latest)}) is intact" if latest is not None else "no earlier checkpoint"
  return UserError(f"writing a checkpoint in {mngr.directory} failed: {_reason(e)}; {kept}. Free disk space or make "
                   "the directory writable, then rerun the same command to resume")


def save(mngr, step, state):
  """Starts an asynchronous save of `state` as step `step`. A failure of this or an earlier save is a UserError
  naming the directory; so is a step Orbax declines (it exists, or a newer one does)."""
  try:
    saved = mngr.save(step, args=ocp.args.StandardSave(state))
  except UserError:
    raise
  except Exception as e:  # an earlier asynchronous save failed, or this one could not start
    raise _unwritable(mngr, e) from None
  if not saved:
    raise UserError(f"checkpoint step {step} not written: {mngr.directory} already holds step {mngr.latest_step()}, "
                    "and a step is never overwritten")


def wait(mngr):
  """Waits for the saves in flight; their failure is a UserError naming the directory."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _unwritable(mngr, e) from None


@contextlib.contextmanager
def closing(mngr):
  """Waits for the saves in flight and closes `mngr` however the block ends (None: nothing to do), so that no
  save is cut off at interpreter exit. When the block failed, a failing save is logged, not raised over it."""
  try:
    yield mngr
  except BaseException:
    if mngr is not None:
      try:
        wait(mngr)
      except UserError as e:
        log.error("%s", e)
      mngr.close()
    raise
  if mngr is not None:
    try:
      wait(mngr)
    finally:
      mngr.close()


def _flat(tree):
  """{"params/conv/kernel": leaf} of an abstract state or of a checkpoint's metadata tree (empty subtrees vanish)."""
  def name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return {name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatches(saved_tree, abstract, partial=False):
  """Lines naming each path whose presence, shape or dtype differs between a checkpoint's metadata tree and
  `abstract`; with `partial`, paths only the checkpoint has are fine (a subset is restored)."""
  saved, want = _flat(saved_tree), _flat(abstract)
  lines = []
  for path in sorted(set(saved) | set(want), key=lambda p: (p.startswith("opt_state"), p)):  # the model first
    if path not in want:
      if not partial:
        lines.append(f"{path} is in the checkpoint only")
    elif path not in saved:
      lines.append(f"{path} is missing from the checkpoint")
    else:
      s, w = saved[path], want[path]
      if tuple(s.shape) != tuple(w.shape) or jnp.dtype(s.dtype) != jnp.dtype(w.dtype):
        lines.append(f"{path} saved {tuple(s.shape)} {s.dtype}, expected {tuple(w.shape)} {w.dtype}")
  return lines


def _saved_tree(mngr, step):
  """The metadata tree (paths, shapes, dtypes) of a saved step, or None when it cannot be read."""
  try:
    return ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir(mngr, step)) / ITEM).tree
  except Exception:  # unreadable metadata is damage, found by the restore below
    return None


def _restore_args(abstract, partial):
  if not partial:
    return ocp.args.StandardRestore(abstract)
  # A subset of the saved tree (inference reads no optimiser state).
  return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=True)


# TensorStore status codes (in the message of the error Orbax passes on) that mean the files themselves are
# wrong: a byte range past a truncated file's end, an undecodable chunk, a missing chunk or manifest.
_DAMAGE_CODES = re.compile(r"\b(OUT_OF_RANGE|FAILED_PRECONDITION|DATA_LOSS|NOT_FOUND|INVALID_ARGUMENT)\b")
# Codes and words of failures outside the files: device memory, the filesystem or network being busy or
# refusing access. These win over a damage code elsewhere in the chain.
_NOT_DAMAGE = re.compile(r"RESOURCE_EXHAUSTED|out of memory|UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|CANCELLED|"
                         r"PERMISSION_DENIED|os_error_code='?(?!2\b)\d+", re.IGNORECASE)


def _chain(e):
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    e = e.__cause__ or e.__context__
  return seen


def is_damage(e):
  """Whether a failed restore is the checkpoint's own fault (a file truncated, missing or not decodable), as
  opposed to a failure around it (out of memory, a transient filesystem error), which a rerun may not meet."""
  chain = _chain(e)
  text = " | ".join(str(x) for x in chain)
  if any(isinstance(x, MemoryError) or (isinstance(x, OSError) and not isinstance(x, FileNotFoundError)
                                         and x.errno is not None) for x in chain) or _NOT_DAMAGE.search(text):
    return False
  return (any(isinstance(x, (FileNotFoundError, json.JSONDecodeError)) for x in chain)
          or bool(_DAMAGE_CODES.search(text)))


def restore_latest(mngr, abstract_state, partial=False):
  """Restores the newest readable checkpoint into `abstract_state`'s shapes and shardings (with `partial`, a
  dict of some of the saved state's fields). Returns None when there is no checkpoint at all.

  A checkpoint that does not fit `abstract_state` is a UserError naming the paths. An unreadable one is
  reported by path and the previous one is tried; none readable is a UserError.
  """
  unreadable = []
  for step in sorted(mngr.all_steps(), reverse=True):
    path = step_dir(mngr, step)
    saved = _saved_tree(mngr, step)
    diff = mismatches(saved, abstract_state, partial) if saved is not None else []
    if diff:
      more = f" (and {len(diff) - MAX_LISTED} more)" if len(diff) > MAX_LISTED else ""
      raise UserError(f"checkpoint {path} does not match the model and optimiser its config builds: "
                      f"{'; '.join(diff[:MAX_LISTED])}{more}. It was written by another config or code version; "
                      "nothing was changed")
    try:
      return mngr.restore(step, args=_restore_args(abstract_state, partial))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      if not is_damage(e):
        raise UserError(f"restoring checkpoint {path} failed: {_reason(e)}. This is not damage to its files, so "
                        "nothing was moved or skipped: fix the cause (free device memory, wait for the filesystem) "
                        "and rerun the same command") from None
      log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, _reason(e))
      unreadable.append(f"{path} ({_reason(e)})")
  if unreadable:
    raise UserError(f"no checkpoint in {mngr.directory} is readable: {'; '.join(unreadable)}. Nothing was changed; "
                    "move them away to start over")
  return None


def set_aside(mngr, after, dest):
  """Moves the step directories newer than step `after` into `dest` (never deleting them); returns their new
  paths. A resumed run would write those steps again, and Orbax declines steps at or below the newest one."""
  moved = []
  for step in sorted(mngr.all_steps()):
    if step > after:
      os.makedirs(dest, exist_ok=True)
      moved.append(shutil.move(step_dir(mngr, step), os.path.join(dest, str(step))))
  if moved:
    mngr.reload()
  return moved


class _OneLine(logging.Filter):
  def filter(self, record):
    if record.name in ("absl", "asyncio") and (record.exc_info or "\n" in record.getMessage()):
      record.msg, record.args = record.getMessage().splitlines()[0], None
      record.exc_info, record.exc_text = None, None
    return True


def quiet_background_errors():
  """For a command-line process. After a failed save or restore, Orbax's background threads log the failure
  with its traceback (absl and asyncio loggers), and callbacks it left behind fail on its closed event loop
  ("Event loop is closed", reported as unraisable). The failure itself reaches the caller, which reports it in
  one line: these keep their first line (logged) or nothing (the closed loop's callbacks)."""
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _OneLine) for f in handler.filters):
      handler.addFilter(_OneLine())
  previous = sys.unraisablehook
  if getattr(previous, "imgrec", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      log.debug("ignored after a failed checkpoint operation: %s", unraisable.exc_value)
      return
    previous(unraisable)
  hook.imgrec = True
  sys.unraisablehook = hook
