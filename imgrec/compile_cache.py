"""JAX's persistent compilation cache, on by default, so that a second run does not recompile.

`enable()` runs before the first compilation of `imgrec train` (from `train.train`) and of every
other `imgrec` command (from `cli.main`). Where the executables go, first match wins:
  the `compile_cache` config key (train only): a directory, or "off";
  the environment variable IMGREC_COMPILE_CACHE: a directory, or "off";
  JAX's own JAX_COMPILATION_CACHE_DIR (or jax_compilation_cache_dir set by the caller), left as is;
  $XDG_CACHE_HOME/imgrec/jax, else ~/.cache/imgrec/jax.
The cache is trusted code: keep it in a directory only you can write to.

Every `imgrec` a user runs at once shares the directory, and any of them may be killed. JAX's own
bounded (LRU) cache writes an entry, then its "-atime" stamp, as two files: a process killed between
the two leaves an entry without a stamp (or a torn one), and every later write of every process fails
on it ("Error writing persistent compilation cache entry ... FileNotFoundError ... -atime") until that
entry is read again. So imgrec gives JAX `Cache`: one file per entry, written under a temporary name
and renamed into place (readers see a whole entry or none; a killed writer leaves only a temporary
file, removed later), last use in the file's mtime, eviction that tolerates files vanishing under it.
"""
import fcntl
import logging
import os
import pathlib
import time

import jax
from jax._src import compilation_cache as jax_cache  # the cache object JAX consults (no public hook)
from jax._src.compilation_cache_interface import CacheInterface

log = logging.getLogger("imgrec")

ENV = "IMGREC_COMPILE_CACHE"
OFF = ("off", "0", "false", "no", "none")
# Cache every compilation that takes this long or more. JAX's default (1 s) skips most CPU compiles of
# small models, whose many sub-second compiles are what a second run would otherwise repeat.
MIN_COMPILE_SECS = 0.1
MAX_BYTES = 4 << 30  # least-recently-used entries are evicted past this
SUFFIX = "-cache"  # JAX's entry file names, so entries written by JAX's own cache are read too
STALE_SECS = 3600  # a temporary file this old is a killed writer's: removed at the next eviction scan


def default_dir():
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "imgrec", "jax")


def resolve(setting=""):
  """The cache directory for a `compile_cache` setting ("" = automatic), or None when off."""
  setting = (setting or os.environ.get(ENV, "")).strip()
  if setting.lower() in OFF:
    return None
  if setting:
    return os.path.abspath(os.path.expanduser(setting))
  return jax.config.jax_compilation_cache_dir or default_dir()


def enable(setting=""):
  """Points JAX's persistent cache at `resolve(setting)` (or turns it off); returns the directory or None.

  Takes effect for compilations after the call; call it again with another setting to switch."""
  path = resolve(setting)
  if (path == jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache == (path is not None)
      and (path is None or isinstance(jax_cache._cache, Cache))):
    return path
  jax_cache.reset_cache()  # JAX opens the cache once, at the first compile after a change
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # an unwritable home must not stop training: run uncached
    log.warning("compile cache %s not usable (%s); compiling without a persistent cache", path, e)
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no lower size limit
  # Should JAX ever open its own cache here instead (after its reset_cache), keep it off the two-file LRU path.
  jax.config.update("jax_compilation_cache_max_size", -1)
  jax_cache._cache = Cache(path, MAX_BYTES)
  return path


class Cache(CacheInterface):
  """A directory of compiled executables that concurrent and killed processes cannot corrupt (module doc)."""

  def __init__(self, path, max_bytes):
    self._path = pathlib.Path(path)
    self.max_bytes = max_bytes

  def get(self, key):
    entry = self._path / f"{key}{SUFFIX}"
    try:
      value = entry.read_bytes()
    except FileNotFoundError:
      return None
    try:
      os.utime(entry)  # last use, for eviction
    except OSError:  # evicted meanwhile: the value read is whole all the same
      pass
    return value

  def put(self, key, value):
    entry = self._path / f"{key}{SUFFIX}"
    if entry.exists():
      return
    tmp = self._path / f".{key}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    tmp.write_bytes(value)
    os.replace(tmp, entry)  # atomic: concurrent writers of one key each put a whole file
    self.evict()

  def evict(self):
    """Removes least-recently-used entries past max_bytes, and stale temporary files; one process at a
    time (others skip: the one evicting does their share)."""
    with open(self._path / ".evict.lock", "a") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        return
      entries, total, now = [], 0, time.time()
      for f in self._path.iterdir():
        try:
          st = f.stat()
        except FileNotFoundError:  # removed by its writer's rename or another eviction
          continue
        if f.name.endswith(SUFFIX):
          entries.append((st.st_mtime, st.st_size, f))
          total += st.st_size
        elif f.name.endswith(".tmp") and now - st.st_mtime > STALE_SECS:
          f.unlink(missing_ok=True)
      for _, size, f in sorted(entries):
        if total <= self.max_bytes:
          break
        f.unlink(missing_ok=True)
        f.with_name(f.name[:-len(SUFFIX)] + "-atime").unlink(missing_ok=True)  # JAX's stamp, where it wrote one
        total -= size
