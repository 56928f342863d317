"""Host preprocessing: op strings, crop boxes checked against hand-computed ones, decoding, draft mode."""
import io

import numpy as np
import pytest
from PIL import Image

from imgrec.data import preprocess
from imgrec.errors import UserError


class Draws:
  """A stand-in rng that returns scripted draws, so a crop box can be computed by hand."""

  def __init__(self, uniform=(), integers=(), random=()):
    self.u, self.i, self.r = list(uniform), list(integers), list(random)

  def uniform(self, low, high):
    return low + self.u.pop(0) * (high - low)  # the scripted value is the fraction of the interval

  def integers(self, low, high):
    return low + self.i.pop(0)

  def random(self):
    return self.r.pop(0)


def smooth_image(w, h, seed=0):
  """A smooth RGB image (so resampling differences stay small), uint8 [h, w, 3]."""
  rng = np.random.default_rng(seed)
  small = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
  return np.asarray(small.resize((w, h), Image.BICUBIC))


def encode(array, fmt, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt, **kw)
  return buf.getvalue()


def test_parse_and_output_size():
  ops = preprocess.parse(preprocess.IMAGENET_TRAIN)
  assert [op.name for op in ops] == ["decode", "random_resized_crop", "flip"]
  assert ops[1].size == (224, 224) and ops[1].scale == (0.08, 1.0) and ops[1].ratio == pytest.approx((0.75, 4 / 3))
  assert preprocess.output_size(ops) == (224, 224)
  assert preprocess.output_size(preprocess.parse(preprocess.IMAGENET_EVAL)) == (224, 224)
  assert preprocess.output_size(preprocess.parse("decode|resize(20, 30)")) == (20, 30)
  assert preprocess.output_size(preprocess.parse("decode|resize_small(64)")) is None
  assert preprocess.parse("decode|random_resized_crop(96, scale=(0.3, 1))")[1].scale == (0.3, 1.0)
  assert preprocess.defaults(True, 0) == (preprocess.IMAGENET_TRAIN, preprocess.IMAGENET_EVAL)
  assert preprocess.defaults(True, 128)[1] == "decode|resize_small(146)|central_crop(128)"
  assert preprocess.defaults(False, 0) == ("decode", "decode")


@pytest.mark.parametrize("spec,message", [
    ("resize(32)", "must start with decode"), ("decode|decode", "must start with decode"),
    ("decode|blur(3)", "unknown preprocessing op 'blur'"), ("decode|value_range(-1, 1)", "data.mean"),
    ("decode|resize_small", "needs a size"), ("decode|central_crop(0)", "positive whole number"),
    ("decode|resize(2.5)", "positive whole number"), ("decode|flip(2)", "p must be in"),
    ("decode|random_resized_crop(32, scale=(0.9, 0.1))", "0 < low <= high"),
    ("decode|random_resized_crop(32, scale=(0.5, 2))", "high must be <= 1"),
    ("decode|resize_small(3, 4)", "at most 1"), ("decode|central_crop(size=3, pad=1)", "no argument 'pad'"),
    ("decode|resize(x)", "bad arguments"), ("decode|resize(", "bad preprocessing op")])
def test_bad_strings_are_clear_errors(spec, message):
  with pytest.raises(UserError, match=message):
    preprocess.parse(spec)


def test_random_resized_crop_box_from_given_draws():
  # 400x300 source. Draw 1: area fraction 0.08 + 0.5 * 0.92 = 0.54 of 120000 = 64800 px, aspect
  # exp(log(3/4) + 0.5 * (log(4/3) - log(3/4))) = 1, so w = h = round(sqrt(64800)) = 255 (fits),
  # top = 0 + 10, left = 0 + 20.
  rng = Draws(uniform=[0.5, 0.5], integers=[10, 20], random=[0.9])
  p = preprocess.plan(preprocess.parse("decode|random_resized_crop(64)|flip"), 400, 300, rng)
  assert p.box == pytest.approx((20, 10, 275, 265)) and (p.h, p.w) == (64, 64) and not p.flip
  # A draw that does not fit (area 1.0 at aspect 3/4 -> 300 x 400 > 400 x 300) is redrawn; the second
  # (area 0.08 + 0.25 * 0.92 = 0.31 -> 37200 px at aspect 3/4 -> w = round(167.03) = 167, h = round(222.71) = 223).
  rng = Draws(uniform=[1.0, 0.0, 0.25, 0.0], integers=[0, 5], random=[0.1])
  p = preprocess.plan(preprocess.parse("decode|random_resized_crop(32)|flip"), 400, 300, rng)
  assert p.box == pytest.approx((5, 0, 172, 223)) and p.flip
  # Ten misses fall back to the central crop, clamped to the ratio range: 1000x100 -> 133x100 at the centre.
  rng = Draws(uniform=[1.0, 1.0] * 10)
  p = preprocess.plan(preprocess.parse("decode|random_resized_crop(16)"), 1000, 100, rng)
  assert p.box == pytest.approx((433, 0, 566, 100))


def test_resize_small_central_crop_box_keeps_the_aspect_ratio():
  # 640x480: resize_small(256) -> 341x256 (int(256 * 640 / 480)); central_crop(224) starts at
  # top round(16) = 16, left round(58.5) = 58 (half to even); in source pixels x 58 * 640/341, y 16 * 480/256.
  p = preprocess.plan(preprocess.parse(preprocess.IMAGENET_EVAL), 640, 480, None)
  assert (p.h, p.w) == (224, 224)
  assert p.box == pytest.approx((58 * 640 / 341, 30.0, 282 * 640 / 341, 450.0))
  x0, y0, x1, y1 = p.box
  assert (x1 - x0) / (y1 - y0) == pytest.approx(1.0, abs=2e-3)  # a square window of the source: no squash
  # Portrait: the width becomes 100, the height int(100 * 500 / 300) = 166.
  p = preprocess.plan(preprocess.parse("decode|resize_small(100)"), 300, 500, None)
  assert (p.h, p.w) == (166, 100)
  # A crop larger than the image enlarges it (aspect kept) to cover the crop.
  p = preprocess.plan(preprocess.parse("decode|central_crop(50)"), 40, 20, None)
  assert (p.h, p.w) == (50, 50) and p.box == pytest.approx((10, 0, 30, 20))


def test_process_equals_crop_then_resize_in_pil():
  src = smooth_image(200, 150)
  data = encode(src, "PNG")
  rng = Draws(uniform=[0.5, 0.5], integers=[10, 20], random=[0.2])
  out = preprocess.process(preprocess.parse("decode|random_resized_crop(48)|flip"), data, 3, rng)
  # area 0.54 * 30000 = 16200 -> 127x127 at (left 20, top 10); flipped (0.2 < 0.5).
  ref = np.asarray(Image.fromarray(src).crop((20, 10, 147, 137)).resize((48, 48), Image.BILINEAR))[:, ::-1]
  diff = np.abs(out.astype(int) - ref)
  # Equal up to the window's edge, where the one-step resample may read source pixels past the box.
  assert diff.max() <= 2 and diff.mean() < 0.1 and (diff[4:-4, 4:-4] == 0).all()
  # Eval: one resample from the source box against resize-then-crop in two steps (within rounding).
  out = preprocess.process(preprocess.parse("decode|resize_small(64)|central_crop(56)"), data, 3, None)
  two_step = np.asarray(Image.fromarray(src).resize((85, 64), Image.BILINEAR).crop((14, 4, 70, 60)))
  assert out.shape == (56, 56, 3)
  assert np.abs(out.astype(int) - two_step).mean() < 2.0


def test_resample_is_bilinear_on_the_exact_box_below_2x():
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, (7, 9, 1)).astype(np.uint8)
  box, (h, w) = (1.5, 0.5, 7.5, 5.5), (4, 4)  # 6 x 5 source pixels to 4 x 4: under 2x
  out = preprocess.resample(a, box, h, w)[..., 0].astype(float)
  # Independently: output pixel centre (i + 0.5) sits at x0 + (i + 0.5) * scale in the source, whose
  # pixel j has its centre at j + 0.5; interpolate the four neighbours, clamped at the border.
  ys = np.clip(box[1] + (np.arange(h) + 0.5) * (box[3] - box[1]) / h - 0.5, 0, 6)
  xs = np.clip(box[0] + (np.arange(w) + 0.5) * (box[2] - box[0]) / w - 0.5, 0, 8)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, 6), np.minimum(x0 + 1, 8)
  fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
  g = a[..., 0].astype(float)
  ref = (g[y0][:, x0] * (1 - fy) * (1 - fx) + g[y0][:, x1] * (1 - fy) * fx + g[y1][:, x0] * fy * (1 - fx)
         + g[y1][:, x1] * fy * fx)
  assert np.abs(out - ref).max() <= 1.0
  # From 2x up the reduction is antialiased (Pillow): a 1-px checkerboard averages to grey, not aliased.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
  small = preprocess.resample(board, (0.0, 0.0, 64.0, 64.0), 8, 8)
  assert np.abs(small.astype(int) - 128).max() <= 2


def test_jpeg_draft_decoding_when_the_target_is_much_smaller():
  src = smooth_image(800, 600, seed=1)
  data = encode(src, "JPEG", quality=95)
  ops = preprocess.parse("decode|resize_small(128)|central_crop(112)")
  p = preprocess.plan(ops, 800, 600, None)
  assert preprocess.draft_factor(p) == 4  # a 600 px box for 112 px out: 1/4 scale still covers it
  out = preprocess.process(ops, data, 3, None)
  full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((170, 128), Image.BILINEAR).crop(
      (29, 8, 141, 120)))
  assert out.shape == (112, 112, 3) and np.abs(out.astype(int) - full).mean() < 3.0
  assert preprocess.draft_factor(preprocess.plan(ops, 300, 200, None)) == 1  # small images: full decode


def test_channels_and_formats():
  rgb = smooth_image(30, 20)
  gray = np.asarray(Image.fromarray(rgb).convert("L"))
  for data in (encode(rgb, "JPEG", quality=95), encode(rgb, "PNG")):
    assert preprocess.header(data) == (30, 20, 3)
    g = preprocess.process(preprocess.parse("decode"), data, 1, None)
    assert g.shape == (20, 30, 1) and np.abs(g[..., 0].astype(int) - gray).mean() < 3.0
  for data in (encode(gray, "JPEG", quality=95), encode(gray, "PNG")):
    assert preprocess.header(data)[2] == 1
    c = preprocess.process(preprocess.parse("decode|resize(8)"), data, 3, None)
    assert c.shape == (8, 8, 3) and (c[..., 0] == c[..., 2]).all()
  cmyk = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
  assert preprocess.process(preprocess.parse("decode"), cmyk.getvalue(), 3, None).shape == (20, 30, 3)
  arr = preprocess.process(preprocess.parse("decode|flip(1.0)"), rgb, 3, np.random.default_rng(0))
  np.testing.assert_array_equal(arr, rgb[:, ::-1])  # decoded arrays (tfds) take the same ops


def test_bad_bytes_raise_bad_image():
  good = encode(smooth_image(64, 48), "JPEG")
  for data in (b"not an image", good[:len(good) // 3]):
    with pytest.raises(preprocess.BadImage):
      preprocess.process(preprocess.parse("decode|resize(8)"), data, 3, None)


def test_server_applies_the_eval_preprocessing_to_uploads():
  from imgrec.serve import protocol
  photo = smooth_image(640, 480, seed=2)
  data = encode(photo, "JPEG", quality=95)
  pp = "decode|resize_small(73)|central_crop(64)"
  spec = protocol.ModelSpec((64, 64, 3), ("a", "b"), pp)
  got = protocol.decode_image(data, spec, protocol.Limits())
  np.testing.assert_array_equal(got, preprocess.process(preprocess.parse(pp), data, 3, None))
  squash = protocol.decode_image(data, protocol.ModelSpec((64, 64, 3), ("a", "b")), protocol.Limits())
  assert np.abs(got.astype(int) - squash).mean() > 5  # a central crop, not the whole photo squashed
  small = protocol.decode_image(encode(photo, "PNG"), protocol.ModelSpec((8, 8, 3), ("a",), "decode"),
                                protocol.Limits())
  assert small.shape == (8, 8, 3)  # a pp without a fixed size is fitted to the model's input
