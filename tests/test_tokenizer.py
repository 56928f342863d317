"""imgrec.tokenizer against Hugging Face's tokenizers (and open_clip's) on prompts with punctuation, capitals,
digits and non-ASCII text: ids identical, every text padded to exactly max_len, cut texts keep their eos last."""
import json
import os

import numpy as np
import pytest

from imgrec import tokenizer
from imgrec.errors import UserError
from tests import text_helpers as th

transformers = pytest.importorskip("tests.torch_reference").transformers

SIGLIP = dict(file="spiece.model", max_len=16, lower=True, canonicalize=True, eos_id=1, pad_id=1, bos_id=None)
CLIP = dict(file="vocab.json", max_len=16, lower=True, canonicalize=False)


def hf_ids(tok, max_len):
  return np.asarray(tok(th.PROMPTS, padding="max_length", max_length=max_len, truncation=True).input_ids)


def test_sentencepiece_ids_match_hugging_face_siglip(tmp_path):
  th.sentencepiece_model(str(tmp_path))
  hf = transformers.SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
  enc = tokenizer.Tokenizer(SIGLIP, str(tmp_path)).encode(th.PROMPTS)
  assert enc.ids.shape == (len(th.PROMPTS), 16) and enc.ids.dtype == np.int32
  np.testing.assert_array_equal(enc.ids, hf_ids(hf, 16))
  assert enc.truncated.tolist() == [len(ids) > 16 for ids in hf(th.PROMPTS).input_ids]
  assert enc.truncated[-1] and enc.ids[-1, -1] == 1  # eos kept last in a cut text


@pytest.mark.parametrize("max_len", [16, 77])
def test_clip_bpe_ids_match_hugging_face_and_open_clip(tmp_path, max_len):
  n = th.clip_vocab(str(tmp_path))
  conv = dict(CLIP, max_len=max_len, bos_id=n - 2, eos_id=n - 1, pad_id=n - 1)
  enc = tokenizer.Tokenizer(conv, str(tmp_path)).encode(th.PROMPTS)
  hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  np.testing.assert_array_equal(enc.ids, hf_ids(hf, max_len))
  assert enc.truncated.tolist() == [len(ids) > max_len for ids in hf(th.PROMPTS).input_ids]
  assert enc.truncated[-1] and enc.ids[-1, -1] == n - 1
  # open_clip's own tokenizer (ftfy clean-up, pads with 0): the same ids up to each text's eos
  oc = th.open_clip_file("tokenizer").SimpleTokenizer(bpe_path=_gz_of(tmp_path), context_length=max_len)
  theirs = oc(th.PROMPTS).numpy()
  for mine, ref in zip(enc.ids, theirs):
    end = int(np.argmax(ref == n - 1)) + 1
    np.testing.assert_array_equal(mine[:end], ref[:end])


def _gz_of(folder):
  """merges.txt as the gzip SimpleTokenizer reads (its vocabulary is made from the merges the same way)."""
  import gzip
  with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
    merges = [m for m in f.read().split("\n")[1:] if m]
  path = os.path.join(folder, "merges.txt.gz")
  with gzip.open(path, "wt", encoding="utf-8") as f:  # SimpleTokenizer reads lines [1, 49152 - 256 - 2 + 1)
    f.write("#version: 0.2\n" + "\n".join(merges))
  return path


def test_tokenizer_json_matches_hugging_face(tmp_path):
  n = th.clip_vocab(str(tmp_path))
  hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  saved = tmp_path / "saved"
  hf.save_pretrained(str(saved))
  conv = dict(file="tokenizer.json", max_len=16, lower=True, add_special=False, eos_id=n - 1, pad_id=n - 1)
  enc = tokenizer.Tokenizer(conv, str(saved)).encode(th.PROMPTS)
  np.testing.assert_array_equal(enc.ids, hf_ids(hf, 16))


def test_conventions_round_trip_and_missing_files(tmp_path):
  th.sentencepiece_model(str(tmp_path))
  tokenizer.write(str(tmp_path), dict(SIGLIP, template="a photo of {}."))
  tok = tokenizer.load(str(tmp_path))
  assert tok.template == "a photo of {}." and tok.max_len == 16
  os.remove(tmp_path / "spiece.model")
  with pytest.raises(UserError, match="has no spiece.model"):
    tokenizer.load(str(tmp_path))
  with pytest.raises(UserError, match="has no text.json"):
    tokenizer.load(str(tmp_path / "elsewhere"))
  (tmp_path / "text.json").write_text(json.dumps(dict(SIGLIP, file="vocab.txt")))
  with pytest.raises(UserError, match="file must be one of"):
    tokenizer.load(str(tmp_path))


def test_canonical_forms():
  assert tokenizer.canonical("  A Photo, of THE   Dog!  ", True, True) == "a photo of the dog"
  assert tokenizer.canonical("A Photo, of", False, False) == "A Photo, of"
  assert tokenizer.canonical("Café—Zürich", True, True) == "café—zürich"  # only ASCII punctuation goes
