"""The embedded caption set: no download, built deterministically from scikit-learn's bundled 8x8 digits.

Each image is a `size` x `size` canvas of one background colour (with a little noise) and one digit glyph,
upscaled and placed at random, painted in another colour; its caption says the three attributes ("a red seven
on a gray background", in one of a few phrasings). Some (colour, background) pairs never occur in training
(HELD_OUT: every colour and every background still does, with other partners), so zero-shot accuracy on the
"unseen" split measures composition, not memory:

  train    seen pairs, train half of the glyphs
  test     seen pairs, test half of the glyphs
  unseen   held-out pairs, test half of the glyphs

Example i of a split depends only on (seed, split, i). The captions' word-level tokenizer is written into a
folder by `write_tokenizer` (tokenizer.json + text.json, as an imported model's; imgrec/tokenizer.py reads it).
"""
import os

import cv2
import numpy as np
import tokenizers
from tokenizers import normalizers, pre_tokenizers

from imgrec import tokenizer
from imgrec.errors import UserError
from imgrec.tasks.detection import synthetic

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
           "white": (245, 245, 245)}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "purple": (110, 40, 140), "orange": (240, 140, 30)}
PHRASES = ("a {c} {d} on a {b} background", "the digit {d} in {c} on {b}", "{c} {d}, {b} background")
SPLITS = {"train": 0, "test": 1, "unseen": 2}
SPECIALS = ("<pad>", "<eos>", "<unk>")
TEMPLATE = "a photo of the digit {}"  # zero-shot prompts over DIGITS (words the captions never use together)


def held_out(colour, background):
  """True for the (colour index, background index) pairs training never shows: 5 of the 20."""
  return (colour + background) % 4 == 0


def pairs(split):
  """The (colour, background) index pairs a split draws from."""
  return [(c, b) for c in range(len(COLOURS)) for b in range(len(BACKGROUNDS))
          if held_out(c, b) == (split == "unseen")]


def caption(digit, colour, background, phrase=0):
  return PHRASES[phrase].format(c=list(COLOURS)[colour], d=DIGITS[digit], b=list(BACKGROUNDS)[background])


class CaptionSplit:
  """One split of the caption set: len(), spec, example(i, train, rng)."""

  def __init__(self, split, n, size, seed, tok):
    if split not in SPLITS:
      raise UserError(f"the caption set has splits {', '.join(SPLITS)}, not {split!r}")
    self.split, self.n, self.size, self.seed, self.tok = split, n, size, seed, tok
    self.glyphs, self.digits = synthetic.glyphs("train" if split == "train" else "test")
    self.pairs = pairs(split)
    self.spec = {"image": ((size, size, 3), np.uint8), "tokens": ((tok.max_len,), np.int32), "label": ((), np.int32),
                 "colour": ((), np.int32), "background": ((), np.int32)}

  def __len__(self):
    return self.n

  def attributes(self, i):
    """(glyph index, colour, background, phrase, placement rng) of example i."""
    rng = np.random.default_rng((self.seed, SPLITS[self.split], i))
    colour, background = self.pairs[rng.integers(len(self.pairs))]
    return int(rng.integers(len(self.glyphs))), colour, background, int(rng.integers(len(PHRASES))), rng

  def image(self, glyph, colour, background, rng):
    s = self.size
    canvas = np.asarray(list(BACKGROUNDS.values())[background], np.float32) + rng.normal(0, 6, (s, s, 3))
    side = int(rng.integers(s * 5 // 8, s * 7 // 8 + 1))
    alpha = cv2.resize(self.glyphs[glyph].astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_LINEAR)
    y, x = (int(v) for v in rng.integers(0, s - side + 1, 2))
    ink = np.asarray(list(COLOURS.values())[colour], np.float32)
    patch = canvas[y:y + side, x:x + side]
    canvas[y:y + side, x:x + side] = patch * (1 - alpha[..., None]) + ink * alpha[..., None]
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)

  def example(self, i, train=False, rng=None):
    del train, rng  # fixed per (seed, split, i): augmentation happens on the device
    glyph, colour, background, phrase, draw = self.attributes(i)
    digit = int(self.digits[glyph])
    return {"image": self.image(glyph, colour, background, draw),
            "tokens": self.tok.encode([caption(digit, colour, background, phrase)]).ids[0],
            "label": np.int32(digit), "colour": np.int32(colour), "background": np.int32(background)}


def vocabulary():
  words = set(" ".join(PHRASES).replace("{c}", "").replace("{d}", "").replace("{b}", "").replace(",", " ").split())
  words |= set(DIGITS) | set(COLOURS) | set(BACKGROUNDS) | set(TEMPLATE.replace("{}", "").split()) | {","}
  return SPECIALS + tuple(sorted(words))


def write_tokenizer(folder, max_len=16, extra=()):
  """A word-level tokenizer.json of the caption words (and the zero-shot template's), then the words `extra` (e.g.
  another data set's class names: the caption words keep their ids), plus text.json into `folder`; returns
  imgrec's Tokenizer of it."""
  words = vocabulary()
  vocab = {w: i for i, w in enumerate(words + tuple(w for w in dict.fromkeys(extra) if w not in words))}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))
  tokenizer.write(folder, {"file": "tokenizer.json", "max_len": max_len, "lower": True, "canonicalize": False,
                           "bos_id": None, "eos_id": vocab["<eos>"], "pad_id": vocab["<pad>"], "add_special": True,
                           "template": TEMPLATE})
  return tokenizer.load(folder)
