"""JAX's persistent compilation cache, on by default, so that a second run does not recompile.

`enable()` runs before the first compilation of `imgrec train` (from `train.train`) and of every
other `imgrec` command (from `cli.main`). Where the executables go, first match wins:
  the `compile_cache` config key (train only): a directory, or "off";
  the environment variable IMGREC_COMPILE_CACHE: a directory, or "off";
  JAX's own JAX_COMPILATION_CACHE_DIR (or jax_compilation_cache_dir set by the caller), left as is;
  $XDG_CACHE_HOME/imgrec/jax, else ~/.cache/imgrec/jax.
The cache is trusted code: keep it in a directory only you can write to.
"""
import logging
import os

import jax

log = logging.getLogger("imgrec")

ENV = "IMGREC_COMPILE_CACHE"
OFF = ("off", "0", "false", "no", "none")
# Cache every compilation that takes this long or more. JAX's default (1 s) skips most CPU compiles of
# small models, whose many sub-second compiles are what a second run would otherwise repeat.
MIN_COMPILE_SECS = 0.1
MAX_BYTES = 4 << 30  # least-recently-used entries are evicted past this (needs `filelock`, else unbounded)


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
  from jax.experimental.compilation_cache import compilation_cache
  path = resolve(setting)
  if path == jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache == (path is not None):
    return path
  compilation_cache.reset_cache()  # JAX opens the cache once, at the first compile after a change
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
  try:
    import filelock  # noqa: F401  (JAX's LRU eviction locks the directory with it)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  except ImportError:
    pass
  return path
