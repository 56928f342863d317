"""The one place that touches Orbax: save, restore-latest with fallback, restore into a target sharding."""
import logging
import os

import orbax.checkpoint as ocp

log = logging.getLogger("imgrec")


def manager(workdir, keep=3, subdir="checkpoints"):
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, subdir)),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr, step, state):
  mngr.save(step, args=ocp.args.StandardSave(state))


def _restore_args(abstract, partial):
  if not partial:
    return ocp.args.StandardRestore(abstract)
  # A subset of the saved tree (inference reads no optimiser state).
  return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=True)


def restore_latest(mngr, abstract_state, partial=False):
  """Restores the newest readable checkpoint into `abstract_state`'s shapes and shardings (with `partial`, a
  dict of some of the saved state's fields).

  Returns None when there is none. An unreadable checkpoint (truncated, corrupt) is
  reported by path and the previous one is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return mngr.restore(step, args=_restore_args(abstract_state, partial))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      path = os.path.join(str(mngr.directory), str(step))
      log.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                  path, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
  return None
