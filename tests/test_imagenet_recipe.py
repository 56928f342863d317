"""The ImageNet recipes end to end on CPU: a generated ImageNet-layout folder (train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG), the tiny variant through the config argument: train, evaluate, checkpoint, resume."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgrec import config
from tests.helpers import ROOT

WNIDS = ("n01440764", "n01443537", "n01484850")


def imagenet_folder(root, train=12, val=4):
  rng = np.random.default_rng(0)
  for split, n in (("train", train), ("val", val)):
    for c, wnid in enumerate(WNIDS):
      d = root / split / wnid
      d.mkdir(parents=True)
      for i in range(n):
        w, h = (int(v) for v in rng.integers(40, 90, 2))
        x = np.clip(rng.normal(60 + 70 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)  # classes differ in brightness
        Image.fromarray(x).save(d / f"{wnid}_{i}.JPEG", quality=90)
  return root


@pytest.mark.parametrize("recipe", ["configs/imagenet_resnet50.py", "configs/imagenet_vit_s16.py"])
def test_recipes_parse_to_the_reference_settings(recipe):
  c = config.validate(config.load(recipe))
  assert c.data.source == "tfds:imagenet2012" and c.data.eval_split == "validation" and c.batch_size == 1024
  assert c.data.pp_eval == "decode|resize_small(256)|central_crop(224)" and c.model.dtype == "bfloat16"
  folder = config.load(f"{recipe}:source=folder:/data/imagenet,batch=256")
  assert folder.data.eval_split == "val" and folder.batch_size == 256


@pytest.mark.slow
def test_resnet50_recipe_trains_evaluates_and_resumes_on_a_folder(tmp_path):
  root = imagenet_folder(tmp_path / "imagenet")
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  train = [sys.executable, "-m", "imgrec", "train", "--config",
           f"configs/imagenet_resnet50.py:source=folder:{root},tiny=True", "--workdir", str(workdir),
           "--config.data.workers=0"]  # worker processes: test_checkpoint, test_grain_pipeline
  first = subprocess.run(train + ["--config.steps=4"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-4000:]
  assert "val accuracy" in first.stdout and (workdir / "checkpoints" / "4").is_dir()
  assert not (workdir / "best").exists()  # the folder's val/ is the reported split: no model selection on it
  info = json.loads((workdir / "dataset.json").read_text())
  assert info["image_shape"] == [32, 32, 3] and info["class_names"] == list(WNIDS)
  assert info["pp_eval"] == "decode|resize_small(37)|central_crop(32)" and info["mean"] == [0.485, 0.456, 0.406]
  again = subprocess.run(train + ["--config.steps=8"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-4000:]
  assert "resuming at step 4" in again.stdout and (workdir / "checkpoints" / "8").is_dir()
  ev = subprocess.run([sys.executable, "-m", "imgrec", "eval", "--workdir", str(workdir), "--json"], cwd=ROOT,
                      env=env, capture_output=True, text=True)
  assert ev.returncode == 0, ev.stderr[-4000:]
  result = json.loads(ev.stdout.strip().splitlines()[-1])
  assert result["examples"] == 12 and result["step"] == 8
