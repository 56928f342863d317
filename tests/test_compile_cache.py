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
