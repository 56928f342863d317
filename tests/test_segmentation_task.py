"""The segmentation task module's pure pieces: the eval fn's summed confusion matrix at the source resolution
(padding masked), evaluate's scores, the upload reply in the upload's own pixels, and the report."""
import base64
import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from imgrec.data import preprocess
from imgrec.tasks import segmentation as task
from imgrec.tasks.segmentation import metrics
from tests.test_segmentation_data import seg_cfg

K = 11


class Oracle(nn.Module):
  """Reads the label an input image encodes in its red channel (class * 20) back as one-hot logits: a perfect
  model at the input's pixels (run_eval writes each example's warped label map there)."""

  @nn.compact
  def __call__(self, x, train=False):
    self.param("unused", nn.initializers.zeros, ())
    cls = jnp.clip(jnp.round(x[..., 0] * 255.0 / 20.0), 0, K - 1).astype(jnp.int32)
    return jax.nn.one_hot(cls, K) * 10.0


class Constant(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    self.param("unused", nn.initializers.zeros, ())
    return jnp.zeros(x.shape[:3] + (K,)).at[..., 0].set(1.0)


def encoded_dataset(pp_eval, size=64):
  ds = task.open_data(seg_cfg("digit_masks", digit_masks_train=1, digit_masks_test=6, digit_masks_size=size,
                              pp_train=pp_eval.replace("letterbox", "resize"), pp_eval=pp_eval))
  return ds, ds.split("test")


def run_eval(module, split, pad=2):
  """(evaluate's record and summary, the eval outputs, info) of one padded batch of the split, each image's red
  channel replaced by its label map at the input's pixels (class * 20; 255 -> 0) for the Oracle."""
  info = {"class_names": [str(i) for i in range(K)], "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
  fn = jax.jit(task.make_eval_fn(module, info, None))
  examples = [split.example(i, False, np.random.default_rng(i)) for i in range(len(split))]
  batch = {k: np.stack([e[k] for e in examples] + [examples[0][k]] * pad) for k in examples[0]}
  batch["mask"] = np.array([True] * len(examples) + [False] * pad)
  batch["image"][..., 0] = np.where(batch["labels"] == 255, 0, batch["labels"] * 20)
  out = fn(module.init(jax.random.key(0), batch["image"][:1].astype(np.float32)), batch)
  outputs = {"sums": jax.device_get(out["sums"]), "preview": np.asarray(out["preview"])[:len(examples)]}
  return task.evaluate(outputs, split, info, None), outputs, info


def test_eval_counts_source_pixels_and_masks_padding():
  _, split = encoded_dataset("decode|letterbox(80)")
  (record, summary), _, _ = run_eval(Constant(), split)
  truth = split.items.labels  # 64 x 64 sources: scored at their own pixels, not the 80 x 80 input's
  want = np.bincount(truth.ravel(), minlength=K)
  np.testing.assert_array_equal(np.asarray(summary["confusion"])[:, 0], want)  # padding rows not counted
  assert np.asarray(summary["confusion"])[:, 1:].sum() == 0 and summary["pixels"] == truth.size
  np.testing.assert_allclose(record["pixel_accuracy"], want[0] / truth.size)
  # class 0's IoU, and 0 for each other class in the ground truth (never predicted: counted as 0)
  np.testing.assert_allclose(record["mIoU"], want[0] / truth.size / (want > 0).sum())


def test_oracle_scores_near_one_through_the_warp_back():
  for pp in ("decode|letterbox(64)", "decode|letterbox(96)|flip(p=1.0)", "decode|resize(48, 80)"):
    _, split = encoded_dataset(pp)
    (record, summary), outputs, _ = run_eval(Oracle(), split)
    exact = pp == "decode|letterbox(64)"
    assert record["pixel_accuracy"] > (0.9999 if exact else 0.98), (pp, record)
    assert record["mIoU"] > (0.9999 if exact else 0.9), (pp, record)
    assert outputs["preview"].shape[0] == 6 and outputs["preview"].dtype == np.uint8


def test_report_and_headline(tmp_path):
  _, split = encoded_dataset("decode|letterbox(64)")
  (record, summary), outputs, info = run_eval(Constant(), split)
  summary.update(split="test", step=5)
  task.write_report(str(tmp_path), outputs, split, info, summary)
  for f in ("report.md", "metrics.json", "overlays.png", "class_iou.png", "confusion.png"):
    assert os.path.getsize(tmp_path / f) > 100, f
  h = task.headline(summary)
  absent = [c for c, v in summary["per_class"].items() if np.isnan(v)]
  assert all(h["per_class"][c] is None for c in absent)
  json.dumps(h, allow_nan=False)
  assert "n/a" in (tmp_path / "report.md").read_text() or not absent


def test_upload_result_in_the_uploads_pixels():
  """A 120 x 60 upload letterboxed to 64: a prediction of class 3 on the model input's left half comes back
  on the upload's left half, 255 nowhere on the upload (the letterbox padding lies outside it)."""
  buf = io.BytesIO()
  Image.fromarray(np.zeros((60, 120, 3), np.uint8)).save(buf, "PNG")
  image, to_source = preprocess.for_model_with_map(buf.getvalue(), "decode|letterbox(64)", (64, 64, 3))
  pred = np.zeros((64, 64), np.int32)
  pred[:, :32] = 3
  names = [str(i) for i in range(K)]
  r = task.upload_result({"segmentation": pred}, (64, 64), to_source, (120, 60), names)
  mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["mask_png"]))))
  assert (r["width"], r["height"]) == (120, 60) and mask.shape == (60, 120)
  assert (mask[:, :60] == 3).all() and (mask[:, 60:] == 0).all()
  assert r["counts"] == {"0": 3600, "3": 3600} and r["classes"] == names


def test_predict_and_postprocess():
  info = {"class_names": [str(i) for i in range(K)], "image_shape": (32, 40, 3)}
  m = Oracle()
  images = np.zeros((2, 32, 40, 3), np.uint8)
  images[..., 0] = 60  # class 3
  v = m.init(jax.random.key(0), images.astype(np.float32))
  out = jax.tree.map(np.asarray, jax.jit(task.make_predict(m, (0.0,) * 3, (1.0,) * 3))(v, images))
  assert out["segmentation"].shape == (2, 32, 40) and out["segmentation"].dtype == np.int32
  assert (out["segmentation"] == 3).all()
  assert task.output_sizes(m, info) == {"H": 32, "W": 40}


def test_confusion_is_additive_over_batches():
  """What steps.stream does with "sums": adding batch matrices gives the whole split's matrix."""
  rng = np.random.default_rng(0)
  p, t = rng.integers(0, 4, (6, 5, 5)), rng.integers(0, 4, (6, 5, 5))
  ok = jnp.ones((3, 5, 5), bool)
  parts = metrics.confusion(p[:3], t[:3], 4, ok) + metrics.confusion(p[3:], t[3:], 4, ok)
  np.testing.assert_array_equal(parts, metrics.confusion(p, t, 4, jnp.ones((6, 5, 5), bool)))
