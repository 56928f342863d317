"""The persistent compilation cache: on by default, and a second `imgrec train` process loads its
train step from it instead of compiling (JAX's own hit/miss log lines, not timings)."""
import os
import subprocess
import sys

from tests.helpers import ROOT

TRAIN = ["-m", "imgrec", "train", "--config.steps=2", "--config.batch_size=16", "--config.eval_every=2",
         "--config.checkpoint_every=2", "--config.log_every=1", "--config.model.kwargs.widths=(4,8)",
         "--config.model.kwargs.hidden=8", "--config.data.prefetch=0"]


def _train(workdir, env, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1", **env)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, *TRAIN, f"--workdir={workdir}", *extra], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def test_second_process_loads_the_train_step_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  first = _train(tmp_path / "a", {"IMGREC_COMPILE_CACHE": str(cache)})
  assert "Finished XLA compilation of jit(train_step)" in first
  step_entries = lambda: sorted(e for e in os.listdir(cache) if e.startswith("jit_train_step-") and e.endswith("-cache"))
  entries = step_entries()
  assert len(entries) == 1, os.listdir(cache)
  # The config key wins over the environment (here: off): the second run reads the same directory.
  second = _train(tmp_path / "b", {"IMGREC_COMPILE_CACHE": "off"}, f"--config.compile_cache={cache}")
  assert "Persistent compilation cache hit for 'jit_train_step'" in second
  # Same key, so nothing new written. (Only the train step is checked: whether JAX caches a tiny
  # op depends on its compile time passing compile_cache.MIN_COMPILE_SECS, which load changes.)
  assert step_entries() == entries


def test_resolve(monkeypatch, tmp_path):
  from imgrec import compile_cache
  monkeypatch.delenv("IMGREC_COMPILE_CACHE", raising=False)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  import jax
  saved = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    assert compile_cache.resolve("") == str(tmp_path / "imgrec" / "jax")
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "j"))  # set by the caller: kept
    assert compile_cache.resolve("") == str(tmp_path / "j")
  finally:
    jax.config.update("jax_compilation_cache_dir", saved)
  monkeypatch.setenv("IMGREC_COMPILE_CACHE", "off")
  assert compile_cache.resolve("") is None
  assert compile_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")  # config beats env
  monkeypatch.setenv("IMGREC_COMPILE_CACHE", str(tmp_path / "e"))
  assert compile_cache.resolve("") == str(tmp_path / "e")
  assert compile_cache.resolve("OFF") is None


COMPILE = """
import sys, warnings
from imgrec import compile_cache
import jax, jax.numpy as jnp
compile_cache.enable(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every compile writes an entry
warnings.simplefilter("always")
for i in range(25):
  jax.jit(lambda x, i=i: jnp.sin(x) * i + i)(jnp.ones(i % 5 + 1)).block_until_ready()
"""


def test_concurrent_processes_and_a_killed_writers_debris(tmp_path):
  """Two processes compile the same functions into one directory at once. It already holds what killed
  writers leave: JAX's own LRU cache's entry without its -atime stamp (with that cache every later write
  failed on it: "Error writing persistent compilation cache entry ... FileNotFoundError ... -atime") and an
  old temporary file of imgrec's."""
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "jit_f-0123-cache").write_bytes(b"torn")
  stale = cache / ".jit_f-0456.99.1.tmp"
  stale.write_bytes(b"half")
  os.utime(stale, (0, 0))
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", COMPILE, str(cache)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  for out in outs:
    assert "persistent compilation cache" not in out, out[-3000:]
  names = os.listdir(cache)
  assert sum(n.startswith("jit__lambda-") and n.endswith("-cache") for n in names) >= 5, names
  assert not stale.exists() and not any(n.endswith(".tmp") for n in names)


def test_eviction_drops_the_least_recently_used(tmp_path):
  from imgrec import compile_cache
  cache = compile_cache.Cache(tmp_path, max_bytes=250)
  for i, key in enumerate("abc"):
    cache.put(key, bytes(100))
    os.utime(tmp_path / f"{key}-cache", (i, i))  # written in the order a, b, c
  # Past 250 bytes: 'a', the oldest, went when 'c' came.
  assert cache.get("a") is None and cache.get("b") == bytes(100)  # the read makes 'b' the newest
  cache.put("d", bytes(100))
  assert cache.get("c") is None and cache.get("b") == cache.get("d") == bytes(100)
  cache.put("b", b"other")  # an existing entry stays as it is
  assert cache.get("b") == bytes(100)
