"""Dense targets move with pixels: under every host preprocessing op, an image whose pixels encode a label map
and the label map warped by the plan's affine map (decode.warp_labels) stay aligned."""
import numpy as np
import pytest

from imgrec.data import decode, preprocess

H, W = 97, 123   # odd sizes: no output centre lands exactly on a source pixel edge by symmetry
STRIPE = 11      # source pixels per stripe
PP = ["decode|resize(64, 80)", "decode|resize(200)", "decode|resize(30)", "decode|resize_small(60)",
      "decode|resize_small(60)|central_crop(50)", "decode|central_crop(40, 70)", "decode|random_resized_crop(48)",
      "decode|flip(p=1.0)", "decode|random_resized_crop(56)|flip", "decode|letterbox(100)",
      "decode|letterbox(50, fill=0)", "decode|random_scale_crop(80)|flip", "decode|random_scale_crop(60, scale=(0.6, 0.9))"]


def stripes(axis):
  """(labels uint8 [H, W] of stripes across `axis` (1: vertical stripes), classes 1..3 cycling; the image that
  encodes them one-hot in its RGB channels, so a bilinear blend of two stripes has the nearer one brightest)."""
  k = (np.arange(W if axis == 1 else H) // STRIPE) % 3
  labels = (np.tile(k, (H, 1)) if axis == 1 else np.tile(k[:, None], (1, W))).astype(np.uint8) + 1
  return labels, (np.eye(3, dtype=np.uint8)[labels - 1] * 255)


def decoded(image):
  """The label an image pixel encodes: its brightest channel + 1, IGNORE where all are dark (the pad fill)."""
  return np.where(image.max(-1) >= 128, image.argmax(-1) + 1, decode.IGNORE).astype(np.uint8)


def near_edge(affine, h, w, axis):
  """Output pixels whose centre's preimage lies near a label edge (a stripe edge, or the image border where the
  pad begins), where the blended image ties so that neither side is wrong: within 0.02 source pixels, or,
  where the image is reduced 2x or more (its antialiasing prefilter spans several source pixels), half an
  output pixel."""
  sx, sy, tx, ty = affine

  def near(scale, shift, n, size, edges):
    spo = 1 / abs(scale)  # source pixels per output pixel
    pos = (np.arange(n) + 0.5 - shift) / scale
    return np.abs(pos[:, None] - np.asarray(edges, float)[None, :]).min(1) < (0.02 if spo < 2 else 0.5 * spo)
  stripe_edges = lambda size: np.concatenate([np.arange(0, size + 1, STRIPE), [size]])
  cols = near(sx, tx, w, W, stripe_edges(W) if axis == 1 else [0, W])
  rows = near(sy, ty, h, H, stripe_edges(H) if axis == 0 else [0, H])
  return rows[:, None] | cols[None, :]


def run(pp, axis, seed, shift=0.0):
  """(decoded image labels, warped labels, tie mask) for one op string and seed; `shift` moves the map."""
  labels, image = stripes(axis)
  ops = preprocess.parse(pp)
  out, affine = preprocess.process_with_map(ops, image, 3, np.random.default_rng(seed))
  affine = (affine[0], affine[1], affine[2] + shift, affine[3] + shift)
  warped = decode.warp_labels(labels, affine, *out.shape[:2])
  return decoded(out), warped, near_edge(affine, *out.shape[:2], axis)


@pytest.mark.parametrize("pp", PP)
def test_image_and_mask_stay_aligned(pp):
  for axis in (0, 1):
    for seed in range(4):
      got, warped, ties = run(pp, axis, seed)
      assert warped.shape == got.shape
      bad = (got != warped) & ~ties
      assert not bad.any(), (pp, axis, seed, np.argwhere(bad)[:5], got[bad][:5], warped[bad][:5])
      assert (warped != decode.IGNORE).any()


def test_check_detects_a_one_pixel_shift():
  """The alignment check above fails for a mask one output pixel off, and for a flip the mask missed."""
  for pp in ("decode|resize(64, 80)", "decode|letterbox(100)", "decode|random_resized_crop(48)"):
    got, warped, ties = run(pp, 1, 0, shift=1.0)
    assert ((got != warped) & ~ties).mean() > 0.05
  labels, image = stripes(1)
  out, affine = preprocess.process_with_map(preprocess.parse("decode|flip(p=1.0)"), image, 3,
                                             np.random.default_rng(0))
  unflipped = decode.warp_labels(labels, (-affine[0], affine[1], 0.0, affine[3]), *out.shape[:2])
  assert (decoded(out) != unflipped).mean() > 0.3


def test_warp_fill_and_dtype():
  """Outside the source the fill; class ids pass through unchanged (no interpolation of ids)."""
  labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
  out = decode.warp_labels(labels, (2.0, 2.0, 0.0, 0.0), 8, 10, fill=255)  # 2x up, two columns past the right
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out[:6, :8], np.repeat(np.repeat(labels, 2, 0), 2, 1))
  assert (out[:, 8:] == 255).all() and (out[6:] == 255).all()
  np.testing.assert_array_equal(decode.warp_labels(labels, (-1.0, 1.0, 4.0, 0.0), 3, 4), labels[:, ::-1])


def test_centre_map_is_the_image_resamplers_convention():
  """resample (OpenCV) of an image with distinct pixel values under a 1:1 box shift agrees with centre_map."""
  a = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
  out = decode.resample(a, (2.0, 1.0, 6.0, 5.0), 4, 4)
  m = decode.centre_map((2.0, 1.0, 6.0, 5.0), 4, 4)
  cols = (m[0, 0] * np.arange(4) + m[0, 2]).astype(int)
  rows = (m[1, 1] * np.arange(4) + m[1, 2]).astype(int)
  np.testing.assert_array_equal(out[..., 0], a[rows[:, None], cols[None, :], 0])
