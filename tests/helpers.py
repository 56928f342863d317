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


def assert_png(path, min_width=200, min_height=150):
  """A PNG worth looking at: readable, at least this big, and not blank (its pixels vary, and more than a
  sliver of them differ from the background colour)."""
  import numpy as np
  from PIL import Image
  with Image.open(path) as im:
    assert im.format == "PNG", (path, im.format)
    assert im.width >= min_width and im.height >= min_height, (path, im.size)
    a = np.asarray(im.convert("RGB"), np.int16)
  background = np.median(a.reshape(-1, 3), axis=0)
  drawn = np.mean(np.abs(a - background).sum(-1) > 30)
  assert a.std() > 5 and drawn > 0.02, (path, float(a.std()), float(drawn))
