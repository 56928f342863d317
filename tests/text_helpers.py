"""Tokenizer files for tests, made offline: a SentencePiece model trained here on a small corpus, and CLIP's
byte-level BPE vocab.json + merges.txt built from the merges list open_clip_torch ships in its wheel."""
import gzip
import importlib.util
import json
import os

import sentencepiece

# Punctuation, capitals, digits, non-ASCII text, extra white space, an empty text and one too long for any max_len.
PROMPTS = ["a photo of a cat.", "A Photo of THE Dog!", "  digits 0123 and 42nd   street  ",
           "naïve café — Zürich, 東京", "it's the dog's bone; they're (here)", "", "emoji 🙂 ok?",
           "a very long caption " * 30]
_WORDS = ("a photo of the cat dog bird red green blue digit zero one two three four five six seven eight nine "
          "on background street naive cafe zurich it is they are here bone caption very long emoji ok "
          "naïve café zürich 42nd 0123").split()


def sentencepiece_model(folder, vocab_size=64):
  """Trains a tiny unigram SentencePiece model (T5/SigLIP's ids: pad 0, eos 1, unk 2) into folder/spiece.model."""
  corpus = [" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(8)) for i in range(400)]
  with open(os.path.join(folder, "spiece.model"), "wb") as f:
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=f, vocab_size=vocab_size,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                             minloglevel=2, hard_vocab_limit=False)
  return os.path.join(folder, "spiece.model")


def _byte_symbols():
  """The 256 printable characters byte-level BPE writes bytes as (printable Latin-1 bytes stand for
  themselves, the others for 256 + their rank), in byte order of that list."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  rest = [b for b in range(256) if b not in keep]
  return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def open_clip_file(name):
  """One module of open_clip_torch (tokenizer, loss) loaded from its file: these import nothing else of open_clip,
  and the package's __init__ pulls in its models (and torchvision) that the tests do not need."""
  spec = importlib.util.find_spec("open_clip")
  path = os.path.join(spec.submodule_search_locations[0], f"{name}.py")
  module_spec = importlib.util.spec_from_file_location(f"open_clip_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def clip_vocab(folder, n_merges=2000):
  """vocab.json + merges.txt of CLIP's BPE (its first `n_merges` merges) from open_clip's packaged merges list."""
  spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
  path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:1 + n_merges]
  symbols = _byte_symbols()
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return len(vocab)
