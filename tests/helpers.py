"""Running Python snippets in subprocesses with their own JAX device setup."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, devices=1, env=None, timeout=300, check=True):
  """Runs `code` in a fresh interpreter with `devices` fake CPU devices; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                  XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc
