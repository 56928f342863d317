"""The verification task module (imgrec/tasks/verification/__init__.py) through the shared step and eval loop:
a few real training steps on face_glyphs, the pairs protocol over streamed embeddings, the report's files."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from imgrec import config, optim, parallel, state, steps, tasks
from imgrec.errors import UserError
from imgrec.tasks import verification as task


def _cfg(**v):
  cfg = config.defaults()
  cfg.task = "verification"
  cfg.data.source = "face_glyphs"
  cfg.data.glyph_images = 2
  cfg.data.image_size = 16
  cfg.verification.update(dict(pairs_per_fold=20, embedding_dim=16, **v))
  cfg.model.name = "small_cnn"
  cfg.model.kwargs = ml_collections.ConfigDict({"widths": (8, 16), "hidden": 32})
  cfg.batch_size = 32
  return cfg


def _info(ds):
  return {"class_names": list(ds.class_names), "mean": [0.5] * 3, "std": [0.25] * 3,
          "image_shape": list(ds.image_shape)}


@pytest.mark.parametrize("loss", ["arcface", pytest.param("softmax", marks=pytest.mark.slow)])
def test_trains_and_evaluates_the_pairs_protocol(tmp_path, loss):
  cfg = _cfg(loss=loss)
  task.validate(cfg)
  ds = task.open_data(cfg)
  info = _info(ds)
  model = task.create_model(cfg, info)
  tx, _ = optim.make(cfg, 4, 4)
  st = state.init_state(model, tx, 0, ds.image_shape)
  step = jax.jit(steps.make_train_step(model, tx, info["mean"], info["std"], task.make_inputs(cfg, info),
                                       task.make_loss(cfg, info, None)[0], cfg))
  train = ds.split("train")
  losses = []
  for i in range(4):
    batch = train.take(np.arange(i * 32, (i + 1) * 32))
    st, m = step(st, batch)
    losses.append(float(m["loss"]))
    assert bool(m["finite"]) and "identity_accuracy" in m
  test = ds.split("test")
  out = steps.stream(task.make_eval_fn(model, info, cfg), state.variables(st), test, 64, parallel.make_mesh())
  assert out["embedding"].shape == (len(test), 16)
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, rtol=1e-5)
  record, summary = task.evaluate(out, test, info, cfg)
  assert set(record) == set(task.RECORD) and record["pairs"] == 400
  assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["eer"] <= 1.0
  summary.update(split="test", step=4)
  task.write_report(str(tmp_path), out, test, info, summary)
  for name in ("metrics.json", "calibration.json", "pairs.txt", "roc.png", "scores.png", "report.md"):
    assert (tmp_path / name).exists(), name
  cal = json.loads((tmp_path / "calibration.json").read_text())
  assert cal["threshold"] == record["threshold"] and cal["far"] == 1e-3
  assert "accuracy" in tasks.line(task, summary)
  # serving: the same embeddings from make_predict, L2-normalised, one per image
  images = test.take(np.arange(3))["image"]
  served = jax.jit(task.make_predict(model, info["mean"], info["std"]))(state.variables(st), images)
  assert tasks.outputs(task, model, info) == [("embeddings", "FP32", (16,))]
  np.testing.assert_allclose(served["embeddings"], out["embedding"][:3], atol=1e-5)


def test_mixing_augmentations_and_bad_settings_are_refused():
  cfg = _cfg()
  cfg.data.augment = "flip|mixup(0.2)"
  with pytest.raises(UserError, match="mixes images"):
    task.make_inputs(cfg, {})
  for key, value, match in [("loss", "triplet", "not one of"), ("scale", 0.0, "positive"),
                            ("calibrate_far", 0.0, "rate"), ("pairs_root", "/x", "without verification.pairs")]:
    bad = _cfg(**{key: value})
    with pytest.raises(UserError, match=match):
      task.validate(bad)


@pytest.mark.parametrize("recipe", ["face_glyphs.py", "face_casia_lfw.py"])
def test_the_recipes_load_and_validate(recipe):
  cfg = config.load(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", recipe))
  assert cfg.task == "verification"
  task.validate(cfg)
