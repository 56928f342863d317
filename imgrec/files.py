"""The run's small files on disk: written whole or not at all, and read back with a clear error when cut short.

`write_atomic(path, text)` writes a temporary file beside `path`, flushes it to disk and renames it over
`path`: a kill or a full disk at any moment leaves either the old file or the new one, never a truncated
mix. Every JSON file of a run (config.json, dataset.json, metrics.jsonl when rewritten, import.json) goes
through it. `read_json(path)` turns a file that is not JSON (cut short by a crash of an older imgrec, or
edited by hand) into a UserError naming it.
"""
import contextlib
import json
import os
import tempfile

from imgrec.errors import UserError


@contextlib.contextmanager
def writing(path):
  """Turns a failed write of `path` (disk full, read-only) into a UserError naming it."""
  try:
    yield
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}; free disk space or make it writable, then rerun "
                    "(what was written before is intact)") from None


def write_atomic(path, text):
  """Replaces `path` by a file holding `text` (str, or bytes for a binary file), in one rename after an fsync
  (the directory is synced too, so the rename itself survives a power cut). A failure is a UserError naming
  `path`; the old file is intact."""
  directory = os.path.dirname(os.path.abspath(path))
  with writing(path):
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.unlink(tmp)
      raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
      dir_fd = os.open(directory, os.O_RDONLY)
      try:
        os.fsync(dir_fd)
      finally:
        os.close(dir_fd)


def write_json(path, value, **dump_kwargs):
  write_atomic(path, json.dumps(value, indent=2, **dump_kwargs))


def read_json(path):
  """The JSON value in `path`; a file that is not JSON is a UserError naming it and saying what to do."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    state = "empty" if not text.strip() else f"not valid JSON ({e.msg} at line {e.lineno})"
    raise UserError(f"{path} is {state}: it was cut short by a crash or edited by hand; restore it from a copy "
                    "(W/previous-*/ holds the files of an earlier run) or train into a new --workdir") from None


# What makes a folder an imgrec run (or the start of one); workdir.py names the same files.
RUN_MARKERS = ("config.json", "dataset.json", "checkpoints", "params.npz")


def holds_run(path):
  """Whether `path` holds an imgrec run (or the start of one): its config.json, a checkpoint or params."""
  return any(os.path.exists(os.path.join(path, n)) for n in RUN_MARKERS)


def refuse_existing_run(path, command):
  """The check every command that creates a workdir (compress, import, ...) makes before it reads or writes
  anything: a directory that already holds a run is refused, so no run is ever overwritten."""
  if holds_run(path):
    raise UserError(f"{path} already holds a run; {command} writes a new workdir and never overwrites one: "
                    "give another path (nothing was written)")
