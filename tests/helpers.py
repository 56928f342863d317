"""Running Python snippets in subprocesses with their own JAX device setup."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# .ci/run sets CI=true (as most CI services do): there a test never skips for a missing system package.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs_debian(present, packages):
  """Marks a test that needs Debian `packages` (not pip's): skipped with the reason where they are absent, as
  on a fresh `pip install -e ".[test]"` machine; under CI it runs anyway, so a missing package fails it there
  instead of skipping silently. `present`: whether what the packages install is on this machine."""
  return pytest.mark.skipif(not present and not CI,
                            reason=f"needs Debian package(s) {packages} (.ci/run installs them)")


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
  with Image.open(path) as im:
    assert im.format == "PNG", (path, im.format)
    assert im.width >= min_width and im.height >= min_height, (path, im.size)
    a = np.asarray(im.convert("RGB"), np.int16)
  background = np.median(a.reshape(-1, 3), axis=0)
  drawn = np.mean(np.abs(a - background).sum(-1) > 30)
  assert a.std() > 5 and drawn > 0.02, (path, float(a.std()), float(drawn))


def photo_folder(root, n=24, classes=3, size=(30, 80), seed=0):
  """Class subfolders of random-pixel images of varied sizes: PNG and JPEG alternate, every third is grayscale.
  Returns {path: (width, height, mode)}."""
  rng = np.random.default_rng(seed)
  made = {}
  for i in range(n):
    d = os.path.join(root, f"c{i % classes}")
    os.makedirs(d, exist_ok=True)
    w, h = (int(v) for v in rng.integers(*size, 2))
    mode = "L" if i % 3 == 0 else "RGB"
    path = os.path.join(d, f"{i}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8), mode).save(path)
    made[path] = (w, h, mode)
  return made


def hashes(root):
  """{relative path: sha256} of every file under `root`: what "nothing changed" is checked against."""
  out = {}
  for r, _, names in os.walk(root):
    for f in names:
      with open(os.path.join(r, f), "rb") as fh:
        out[os.path.relpath(os.path.join(r, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return out
