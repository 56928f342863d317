"""The Grain pipeline with real worker processes: batches independent of the worker count, resume
without replay, a plain script (absl flags never parsed), and no orphan workers after kill -9."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from imgrec import config, parallel
from imgrec.data import pipeline, sources
from tests.helpers import ROOT, photo_folder


def folder_split(root, workers):
  photo_folder(root)
  cfg = config.defaults().data
  cfg.source, cfg.image_size, cfg.test_fraction, cfg.workers = f"folder:{root}", 16, 0.25, workers
  return sources.load(cfg).split("train")


def collect(split, start, end, workers):
  sharding = parallel.batch_sharding(parallel.make_mesh())
  return [(s, np.asarray(b["image"]), np.asarray(b["label"]))
          for s, b in pipeline.train_batches(split, 6, 7, start, end, sharding, 2, workers=workers)]


def test_batches_do_not_depend_on_workers_and_resume_without_replay(tmp_path):
  split = folder_split(tmp_path, workers=0)
  here = collect(split, 0, 7, workers=0)
  two = collect(split, 0, 7, workers=2)
  resumed = collect(split, 4, 7, workers=2)
  assert [s for s, _, _ in two] == list(range(7)) and [s for s, _, _ in resumed] == [4, 5, 6]
  for (_, a, la), (_, b, lb) in zip(here, two):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
  for (_, a, _), (_, b, _) in zip(here[4:], resumed):
    np.testing.assert_array_equal(a, b)
  # The labels follow the seeded order of train_indices; each epoch (3 steps of 6) sees every example once.
  order = [idx for _, idx in pipeline.train_indices(len(split), 6, 7, 0, 7)]
  for (_, _, labels), idx in zip(here, order):
    np.testing.assert_array_equal(labels, split.labels[idx])
  assert sorted(np.concatenate(order[:3]).tolist()) == list(range(18))
  assert not np.array_equal(here[0][1], here[3][1])  # new crops and order next epoch


PLAIN_SCRIPT = r"""
import os, sys, time
from imgrec import config, parallel
from imgrec.data import pipeline, sources
cfg = config.defaults().data
cfg.source, cfg.image_size, cfg.workers = "folder:" + sys.argv[1], 16, 2
split = sources.load(cfg).split("train")
batches = pipeline.train_batches(split, 6, 0, 0, 10 ** 6, parallel.batch_sharding(parallel.make_mesh()), 1)
step, batch = next(batches)
print("FIRST", step, batch["image"].shape, flush=True)
time.sleep(600)
"""


def test_plain_script_runs_workers_and_kill_9_leaves_no_orphans(tmp_path):
  photo_folder(tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", PLAIN_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline()
    assert line.startswith("FIRST 0 (6, 16, 16, 3)"), proc.stderr.read()[-3000:]
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "resource_tracker" not in " ".join(
        p.cmdline())]
    assert len(workers) >= 2
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  deadline = time.time() + 20
  while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers):
    time.sleep(0.2)
  alive = [p.pid for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
  assert not alive, f"workers outlived their killed parent: {alive}"


def test_normalisation_presets_values_and_estimate(tmp_path):
  split = folder_split(tmp_path, workers=0)
  cfg = config.defaults().data
  cfg.norm = "imagenet"
  assert pipeline.normalization(cfg, split) == (list(pipeline.IMAGENET_MEAN), list(pipeline.IMAGENET_STD))
  cfg.norm, cfg.mean, cfg.std = "", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  assert pipeline.normalization(cfg, split) == ([0.5] * 3, [0.25] * 3)
  cfg.mean, cfg.std, cfg.stats_examples = (), (), 5
  mean, std = pipeline.normalization(cfg, split)
  idx = np.sort(np.random.default_rng(0).choice(len(split), 5, replace=False))
  x = split.get(idx)[0].astype(np.float64) / 255  # the same sample, decoded here
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)
  cfg.mean, cfg.std = (0.5,), (0.2,)
  with pytest.raises(Exception, match="one value per channel"):
    pipeline.normalization(cfg, split)
