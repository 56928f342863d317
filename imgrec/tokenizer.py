"""Text -> fixed-length token ids for two-tower models, offline: the tokenizer is a file of the import folder
(never fetched from a hub), read by a maintained library, and the model's text conventions are data in
`text.json` beside it, not code paths:

  {"file": "spiece.model" | "tokenizer.json" | "vocab.json",   the tokenizer (vocab.json: with merges.txt)
   "max_len": 64,        every text is padded (or cut) to exactly this many ids: the text tower's positions
   "lower": true,        lower-case first (SigLIP and CLIP were trained on lower-case text)
   "canonicalize": true, SigLIP: ASCII punctuation removed, runs of white space made one space
   "bos_id": null,       put ahead of the ids (CLIP's <|startoftext|>), unless the tokenizer adds it itself
   "eos_id": 1,          ends every text, kept last when a text is cut (CLIP's EOS pooling reads it)
   "pad_id": 1,          fills the rest (SigLIP pools the last position, so padding is part of the input)
   "add_special": true,  false when the tokenizer file adds bos/eos itself (a tokenizer.json post-processor)
   "template": "a photo of a {}."}   the model's default prompt

Three kinds of files: `spiece.model` (SentencePiece, SigLIP) through `sentencepiece`; `tokenizer.json` (Hugging
Face fast tokenizers) through `tokenizers`; `vocab.json` + `merges.txt` (CLIP's byte-level BPE) through a
`tokenizers` BPE model with CLIP's normalisation and word split.
"""
import json
import os
import re
import string
import tempfile
from typing import NamedTuple

import numpy as np
import sentencepiece
import tokenizers
from tokenizers import normalizers, pre_tokenizers

from imgrec import files
from imgrec.errors import UserError

CONVENTIONS_FILE = "text.json"
KINDS = ("spiece.model", "tokenizer.json", "vocab.json")
# CLIP's word split: its special tokens, English contractions, runs of letters, single digits, runs of anything else
# that is not white space (byte-level BPE then works inside each piece).
CLIP_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class Encoded(NamedTuple):
  ids: np.ndarray        # int32 [N, max_len]
  truncated: np.ndarray  # bool [N]: the text had more tokens than max_len (cut, eos kept last)


def canonical(text, lower, canonicalize):
  """The text as the model was trained to read it."""
  if lower:
    text = text.lower()
  if canonicalize:
    text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
  return text


def clip_bpe(vocab_path, merges_path):
  """A `tokenizers.Tokenizer` of CLIP's byte-level BPE from vocab.json + merges.txt: NFC, white space runs made one
  space, lower case; CLIP's word split; words end in "</w>"."""
  with open(vocab_path, encoding="utf-8") as f:
    vocab = json.load(f)
  with open(merges_path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f]
  merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
  unk = "<|endoftext|>" if "<|endoftext|>" in vocab else None
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, end_of_word_suffix="</w>", unk_token=unk))
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(CLIP_SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  return tok


class Tokenizer:
  """Encodes texts by the conventions of one model (a `text.json` dict plus the folder its file is in)."""

  def __init__(self, conventions, folder):
    self.conv = dict(conventions)
    kind = self.conv.get("file")
    if kind not in KINDS:
      raise UserError(f"{os.path.join(folder, CONVENTIONS_FILE)}: file must be one of {', '.join(KINDS)}, "
                      f"got {kind!r}")
    needed = [kind] + (["merges.txt"] if kind == "vocab.json" else [])
    missing = [n for n in needed if not os.path.isfile(os.path.join(folder, n))]
    if missing:
      raise UserError(f"{folder} has no {' or '.join(missing)}: the model's tokenizer must be in its folder (imgrec "
                      "never downloads one); copy it there from the model's original files")
    path = os.path.join(folder, kind)
    if kind == "spiece.model":
      self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
      self._encode = lambda texts: [self._sp.encode(t) for t in texts]
    else:
      tok = (tokenizers.Tokenizer.from_file(path) if kind == "tokenizer.json"
             else clip_bpe(path, os.path.join(folder, "merges.txt")))
      tok.no_truncation()
      tok.no_padding()
      special = not self.conv.get("add_special", True)  # the file's own post-processor adds bos/eos
      self._encode = lambda texts: [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=special)]
    self.max_len = int(self.conv["max_len"])

  @property
  def template(self):
    return self.conv.get("template") or "{}"

  def encode(self, texts):
    """`Encoded` ids [N, max_len] of `texts` (a list of str): canonicalised, tokenized, bos/eos added, cut to
    max_len with eos kept last, padded with pad_id."""
    c = self.conv
    pieces = self._encode([canonical(t, c.get("lower", False), c.get("canonicalize", False)) for t in texts])
    out = np.full((len(texts), self.max_len), c["pad_id"], np.int32)
    truncated = np.zeros(len(texts), bool)
    add = c.get("add_special", True)
    for i, ids in enumerate(pieces):
      ids = ([c["bos_id"]] if add and c.get("bos_id") is not None else []) + list(ids)
      ids += [c["eos_id"]] if add and c.get("eos_id") is not None else []
      if len(ids) > self.max_len:
        truncated[i] = True
        ids = ids[:self.max_len - 1] + ([c["eos_id"]] if c.get("eos_id") is not None else ids[self.max_len - 1:])
      out[i, :len(ids)] = ids
    return Encoded(out, truncated)


def write(folder, conventions):
  """Writes `text.json` into `folder` (its tokenizer file must be there: checked by loading it)."""
  Tokenizer(conventions, folder)
  files.write_json(os.path.join(folder, CONVENTIONS_FILE), conventions)


def load(folder):
  """The Tokenizer of a folder with a `text.json` (an import folder, a run of a two-tower model)."""
  path = os.path.join(folder, CONVENTIONS_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{folder} has no {CONVENTIONS_FILE}: it holds no text tower's tokenizer; import a two-tower "
                    "model (imgrec import FOLDER --out W) with its tokenizer files, or give a run that has one")
  with open(path) as f:
    try:
      conventions = json.load(f)
    except ValueError as e:
      raise UserError(f"{path} is not valid JSON ({e}); import the model again") from None
  return Tokenizer(conventions, folder)


def files_of(folder):
  """{name: bytes} of a tokenizer folder: text.json and the tokenizer file(s) it names (what an export carries)."""
  tok = load(folder)
  names = [CONVENTIONS_FILE, tok.conv["file"]] + (["merges.txt"] if tok.conv["file"] == "vocab.json" else [])
  out = {}
  for name in names:
    with open(os.path.join(folder, name), "rb") as f:
      out[name] = f.read()
  return out


def from_files(files):
  """The Tokenizer of `files_of`'s {name: bytes} (written into a temporary folder and read from there: the
  libraries read files; once loaded, the tokenizer holds everything in memory)."""
  with tempfile.TemporaryDirectory() as folder:
    for name, blob in files.items():
      with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
        f.write(blob)
    return load(folder)
