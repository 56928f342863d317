"""Boxes move with the pixels: filled boxes drawn into an image, each host op run on it, and the
transformed boxes checked against where the filled pixels went."""
import io

import numpy as np
import pytest
from PIL import Image

from imgrec.data import preprocess, splits as data_splits
from imgrec.tasks.detection import transforms

OPS = ["decode|letterbox(64)", "decode|letterbox(48, fill=0)|flip(1)", "decode|random_scale_crop(64)|flip",
       "decode|random_scale_crop(40, scale=(1.5, 2.5))", "decode|resize(30, 50)|flip(1)",
       "decode|random_resized_crop(32, scale=(0.3, 1))|flip", "decode|resize_small(40)|central_crop(36)"]


def drawn(seed, width, height):
  """An RGB image with one random filled box per channel (they may overlap), and the boxes."""
  rng = np.random.default_rng(seed)
  image = np.zeros((height, width, 3), np.uint8)
  boxes = []
  for c in range(3):
    x0, y0 = int(rng.integers(0, width - 12)), int(rng.integers(0, height - 12))
    x1, y1 = int(rng.integers(x0 + 10, width + 1)), int(rng.integers(y0 + 10, height + 1))
    image[y0:y1, x0:x1, c] = 255
    boxes.append((x0, y0, x1, y1))
  return image, np.array(boxes, np.float64)


@pytest.mark.parametrize("spec", OPS)
@pytest.mark.parametrize("seed", range(4))
def test_transformed_boxes_cover_the_transformed_filled_regions(spec, seed):
  width, height = [(90, 60), (60, 100), (300, 200), (37, 53)][seed]  # 300x200: a reduction past 2x
  image, boxes = drawn(seed, width, height)
  data = image if seed % 2 else _png(image)  # decoded arrays and encoded files take the same path
  out, affine = preprocess.process_with_map(preprocess.parse(spec), data, 3, np.random.default_rng(seed))
  h, w = out.shape[:2]
  moved, keep = transforms.clip(transforms.apply_affine(boxes, affine), h, w, min_visible=0.0)
  for c in range(3):
    filled = out[..., c] > 127
    if not keep[c]:
      assert not filled.any(), f"box {c} was dropped as outside, but its pixels are in the output"
      continue
    x0, y0, x1, y1 = moved[c]
    ys, xs = np.nonzero(filled)
    assert len(xs), f"box {c} {moved[c]} is inside the output, but none of its pixels is"
    # Every filled pixel lies in the box (one pixel of resampling blur allowed) ...
    assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1, (
        f"{spec}: filled pixels [{xs.min()}, {ys.min()}, {xs.max() + 1}, {ys.max() + 1}] leave box {moved[c]}")
    # ... and the box is tight: its interior (a pixel in from each edge) is filled.
    inner = filled[int(np.ceil(y0 + 1)):int(np.floor(y1 - 1)), int(np.ceil(x0 + 1)):int(np.floor(x1 - 1))]
    assert inner.size == 0 or inner.mean() > 0.98, f"{spec}: box {moved[c]} is not tight ({inner.mean():.2f} filled)"


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG")
  return buf.getvalue()


def test_letterbox_keeps_aspect_pads_and_maps_back():
  image = np.full((50, 100, 3), 200, np.uint8)
  out, affine = preprocess.process_with_map(preprocess.parse("decode|letterbox(64, fill=7)"), image, 3, None)
  assert out.shape == (64, 64, 3) and affine == pytest.approx((0.64, 0.64, 0.0, 0.0))
  assert (out[:32] == 200).all() and (out[33:] == 7).all()  # the image on top, padding below
  sx, sy, tx, ty = preprocess.invert(affine)
  assert (64 * sx + tx, 32 * sy + ty) == pytest.approx((100, 50))  # output corner -> source corner


def test_served_image_boxes_map_back_to_the_upload():
  image, boxes = drawn(5, 120, 80)
  out, to_source = preprocess.for_model_with_map(_png(image), "decode|letterbox(64)", (32, 32, 3))  # then fit 2x
  assert out.shape == (32, 32, 3) and to_source == pytest.approx((120 / 32, 120 / 32, 0, 0))
  seen = [np.nonzero(out[..., c] > 127) for c in range(3)]
  found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in seen], float)
  np.testing.assert_allclose(transforms.to_source(found, to_source, 120, 80), boxes, atol=120 / 32 + 0.5)


def test_clip_drops_boxes_mostly_cut_away_and_pad_keeps_the_largest():
  boxes, keep = transforms.clip([[-10, 0, 10, 10], [-35, 0, 10, 10], [5, 5, 5, 9], [50, 50, 60, 60]], 40, 40)
  assert keep.tolist() == [True, False, False, False]  # half visible; a quarter minus; empty; outside
  assert boxes[0].tolist() == [0, 0, 10, 10]
  t = transforms.pad(np.array([[0, 0, 1, 1], [0, 0, 5, 5], [0, 0, 3, 3]]), np.array([1, 2, 3]), 2)
  assert t["classes"].tolist() == [2, 3] and t["box_mask"].tolist() == [True, True]
  assert t["boxes"].dtype == np.float32 and transforms.pad(np.zeros((0, 4)), [], 3)["box_mask"].sum() == 0


def test_detection_op_strings_parse_and_validate():
  train, ev = data_splits.dense_pp(96)
  assert preprocess.output_size(preprocess.parse(train)) == preprocess.output_size(preprocess.parse(ev)) == (96, 96)
  with pytest.raises(Exception, match="0..255"):
    preprocess.parse("decode|letterbox(64, fill=300)")
  with pytest.raises(Exception, match="low <= high"):
    preprocess.parse("decode|random_scale_crop(64, scale=(2, 1))")
