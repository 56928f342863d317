"""TensorBoard events and the profiler window, read back with TensorBoard's own event reader."""
import collections
import glob
import gzip
import json
import os
import shutil

import pytest
from tensorboard.backend.event_processing import event_accumulator

from imgrec import cli, tracking, train, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from tests.conftest import tiny_config

TINY = ["--config.model.kwargs.widths=(8,16)", "--config.model.kwargs.hidden=32", "--config.batch_size=32",
        "--config.data.prefetch=0"]


# What a classification run shows: every number of its metrics.jsonl records (tracking names none).
TRAIN_KEYS = ("loss", "accuracy", "grad_norm", "lr", "img_per_sec")
EVAL_KEYS = ("accuracy", "loss", "top5_accuracy", "ece")

def read_events(path):
  acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0,
                                                                 event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def steps_of(acc, tag):
  return [e.step for e in acc.Scalars(tag)]


def test_resumed_run_shows_each_step_once_with_eval_metrics_and_images(tmp_path, monkeypatch):
  w = str(tmp_path / "w")
  args = ["train", "--workdir", w, *TINY, "--config.steps=20", "--config.log_every=5", "--config.eval_every=10",
          "--config.checkpoint_every=8", "--config.data.val_fraction=0.1"]
  opened, load = [], sources.load
  monkeypatch.setattr(sources, "load", lambda cfg: opened.append(cfg.source) or load(cfg))
  assert cli.main(args) == 0
  assert opened == ["digits"]  # the augmentation preview drew from the trainer's data, not a second scan
  first_file = sorted(glob.glob(os.path.join(w, "tensorboard", "events.*")))[0]  # the trainer's
  # A process killed after step 20 whose last checkpoint is step 8: it wrote steps 10-20 already.
  for step in ("16", "20"):
    shutil.rmtree(os.path.join(w, "checkpoints", step))
  shutil.rmtree(os.path.join(w, "best"))
  assert max(steps_of(read_events(first_file), "train/loss")) == 20
  assert cli.main(args) == 0  # resumes at step 8

  acc = read_events(os.path.join(w, "tensorboard"))
  records = wd.read_metrics(w)
  by_split = collections.defaultdict(list)
  for r in records:
    by_split[r["split"]].append(r["step"])
  assert by_split["train"] == [5, 8, 10, 15, 16, 20] and by_split["val"] == [10, 20]  # metrics.jsonl, trimmed
  tags = acc.Tags()["scalars"]
  for key in TRAIN_KEYS:
    assert steps_of(acc, f"train/{key}") == by_split["train"], key
  for key in EVAL_KEYS:
    assert steps_of(acc, f"val/{key}") == by_split["val"]
    assert steps_of(acc, f"test/{key}") == [20]
  assert len(tags) == len(TRAIN_KEYS) + 2 * len(EVAL_KEYS)
  # The values are metrics.jsonl's: the resumed process's, not the killed one's.
  loss = {e.step: e.value for e in acc.Scalars("val/loss")}
  assert loss == pytest.approx({r["step"]: r["loss"] for r in records if r["split"] == "val"}, rel=1e-6)

  images = {t: acc.Images(t) for t in acc.Tags()["images"]}
  assert [e.step for e in images["train/augmented_examples"]] == [10]  # the run's first evaluation, once
  for tag in ("test/confusion_matrix", "test/reliability"):
    assert [e.step for e in images[tag]] == [20]  # the killed process's are purged
    assert images[tag][-1].encoded_image_string.startswith(b"\x89PNG") and images[tag][-1].width > 200

  assert cli.main(args) == 0  # an already finished run: nothing new in TensorBoard
  again = read_events(os.path.join(w, "tensorboard"))
  assert [len(again.Scalars(t)) for t in tags] == [len(acc.Scalars(t)) for t in tags]
  assert len(again.Images("test/reliability")) == 1


def test_profile_window_traces_those_steps(tmp_path, capsys):
  w = str(tmp_path / "w")
  train.train(tiny_config(steps=5, log_every=5, eval_every=5, checkpoint_every=5, profile="2:4"), w)
  out = capsys.readouterr().out
  run, = glob.glob(os.path.join(w, "profile", "plugins", "profile", "*"))
  assert glob.glob(os.path.join(run, "*.xplane.pb")) and f"profile: steps 2-3 traced into {run}" in out
  with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:
    events = json.load(f)["traceEvents"]
  steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
  assert steps == [2, 3]  # StepTraceAnnotation of the window's steps, and only those


@pytest.mark.parametrize("spec", ["5", "4:2", "a:b", "-1:3", "3:3"])
def test_bad_profile_window_is_a_user_error(spec):
  with pytest.raises(UserError, match="START:STOP"):
    tracking.parse_window(spec)
