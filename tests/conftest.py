"""Shared fixtures. The main test process sees 1 CPU device; tests that need 8 fake
devices or several processes run a subprocess (see tests/helpers.py)."""
import pytest

from imgrec import config


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
  from imgrec import train
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train(tiny_config(), workdir)
  return workdir
