"""Small CNN on scikit-learn's digits: the default run, no download.

  imgrec train --config configs/digits_cnn.py --workdir runs/digits_cnn

Expected: test accuracy ~98.6% (359 held-out digits), ~25 s wall on the 2-core CPU
(BENCHMARKS.md).
"""
from imgrec.config import defaults


def get_config(arg=None):
  del arg
  return defaults()
