"""The embedded caption set: deterministic, its held-out attribute pairs only in the unseen split, captions that
say what the image shows, every word known to its tokenizer."""
import numpy as np

from imgrec.tasks.image_text import captions


def test_splits_hold_out_pairs_and_are_deterministic(tmp_path):
  tok = captions.write_tokenizer(str(tmp_path))
  train, unseen = captions.CaptionSplit("train", 64, 32, 0, tok), captions.CaptionSplit("unseen", 32, 32, 0, tok)
  seen = {(int(e["colour"]), int(e["background"])) for e in map(train.example, range(64))}
  held = {(int(e["colour"]), int(e["background"])) for e in map(unseen.example, range(32))}
  assert seen and held and not seen & held
  assert all(captions.held_out(c, b) for c, b in held)
  assert {c for c, _ in seen} == set(range(5)) and {b for _, b in seen} == set(range(4))  # each attribute seen
  a, b = train.example(5), captions.CaptionSplit("train", 64, 32, 0, tok).example(5)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["image"], captions.CaptionSplit("train", 64, 32, 1, tok).example(5)["image"])
  for k, (shape, dtype) in train.spec.items():
    assert a[k].shape == shape and a[k].dtype == dtype


def test_captions_match_pixels_and_tokenize_without_unknowns(tmp_path):
  tok = captions.write_tokenizer(str(tmp_path))
  split = captions.CaptionSplit("test", 40, 32, 0, tok)
  unk = captions.vocabulary().index("<unk>")
  for i in range(40):
    e = split.example(i)
    img = e["image"].reshape(-1, 3).astype(float)
    bg = np.asarray(list(captions.BACKGROUNDS.values())[e["background"]])
    ink = np.asarray(list(captions.COLOURS.values())[e["colour"]])
    near = lambda c: np.mean(np.abs(img - c).sum(-1) < 60)
    assert near(bg) > 0.3 and near(ink) > 0.01, i  # the background fills most, the digit's colour shows
    ids = e["tokens"]
    assert unk not in ids and ids[-1] == tok.conv["pad_id"]
    words = captions.caption(int(e["label"]), int(e["colour"]), int(e["background"]), 0).split()
    assert captions.DIGITS[e["label"]] in words
  prompts = tok.encode([captions.TEMPLATE.format(d) for d in captions.DIGITS])
  assert unk not in prompts.ids and not prompts.truncated.any()
