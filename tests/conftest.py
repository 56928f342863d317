"""Shared fixtures. The main test process sees 1 CPU device; tests that need 8 fake
devices or several processes run a subprocess (see tests/helpers.py)."""
import numpy as np
import pytest

from imgrec import compile_cache, config, state as train_state, steps, train, workdir as wd
from imgrec.data import sources

# As `imgrec` does at start-up: every test's compilations persist, so a second run of the suite loads them.
compile_cache.enable()


def tiny_config(**overrides):
  """A tiny, fast digits run: small CNN, a few dozen steps."""
  cfg = config.defaults()
  cfg.model.kwargs.widths = (8, 16)
  cfg.model.kwargs.hidden = 32
  cfg.batch_size = 32
  cfg.steps = 60
  cfg.log_every = 20
  cfg.eval_every = 60
  cfg.checkpoint_every = 30
  cfg.data.prefetch = 0
  for key, value in overrides.items():
    node = cfg
    *path, last = key.split("__")
    for p in path:
      node = node[p]
    with node.ignore_type():
      node[last] = value
  return cfg


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A digits workdir trained for 60 steps (~90% test accuracy), shared by read-only tests."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train(tiny_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def reference(trained_workdir):
  """64 test images and the top-1 classes of the model `imgrec eval` restores, computed here directly."""
  cfg, info, model, state = wd.restore(trained_workdir)
  images, labels = sources.load(cfg.data).split("test").get(np.arange(64))
  logits = model.apply(train_state.variables(state), steps.normalize(images, info["mean"], info["std"]), train=False)
  top1 = np.asarray(logits).argmax(-1)
  assert (top1 == labels).mean() > 0.5  # a trained model, so agreement below is meaningful
  return images, top1, info
