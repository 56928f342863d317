"""The image-text task's settings: its config section, the data keys it adds, and their checks."""
from imgrec.errors import UserError

NAME = "image_text"
# Model selection: zero-shot accuracy (on the held-out attribute combinations when the data has them), or retrieval
# recall@1.
SELECT = {"zeroshot_accuracy": "max", "zeroshot_seen_accuracy": "max", "i2t_r1": "max", "t2i_r1": "max"}
DEFAULT_SELECT = "zeroshot_accuracy"
# Classification sources whose images are decoded on the host (data.pp_* apply); the caption sources, digits and
# IDX sets are held in memory as arrays (see data.py).
DECODED_SOURCES = ("folder:", "tfds:")
LOSSES = ("sigmoid", "softmax")
# Keys that only change how a run is evaluated, not what it learns.
MAY_CHANGE = ("image_text.templates", "image_text.prompt_names")


def settings():
  """{section: {key: default}}: the `image_text` section and the keys it adds to `data`."""
  return {
      NAME: {
          "loss": "sigmoid",       # sigmoid (SigLIP: every pair its own match-or-not) | softmax (CLIP's contrastive)
          "lock_image": False,     # LiT: the image tower (img, img_proj) gets no updates; only the text side learns
          "templates": (),         # zero-shot prompts, each with one "{}" for the class name (): the tokenizer's own
          "prompt_names": (),      # the names written into the prompts, one per class of the data, in its order
                                   # (CLIP's curated ImageNet names; "zero".."nine" for digits): (): its class names
          "tokenizer": "",         # a folder with text.json + its tokenizer file ("": the caption set's words)
          "text_len": 16,          # tokens per text of the caption set's tokenizer (with tokenizer "")
          "embed_dim": 0,          # the shared embedding size (0: the model's published one, e.g. 768 for siglip_b16)
      },
      # data.source: glyph_captions, captions:FILE.jsonl@IMAGES, or any classification source (zero-shot from its
      # class names; trained on captions of them): see data.py
      "data": {
          "caption_train": 4000,   # glyph_captions: training examples (seen colour/background pairs)
          "caption_test": 500,     # glyph_captions: test examples of seen pairs (retrieval, seen zero-shot)
          "caption_unseen": 500,   # glyph_captions: test examples of the held-out pairs (zero-shot on them)
          "caption_seed": 0,       # glyph_captions: the fixed draw of every split's examples
      },
  }


def validate(cfg):
  """UserErrors for settings that cannot work, before any work."""
  v, d = cfg[NAME], cfg.data
  if v.loss not in LOSSES:
    raise UserError(f"image_text.loss {v.loss!r} is not one of {', '.join(LOSSES)}")
  bad = [t for t in v.templates if t.count("{}") != 1]
  if bad:
    raise UserError(f"image_text.templates need exactly one '{{}}' where the class name goes; {bad[0]!r} has "
                    f"{bad[0].count('{}')}")
  blank = [n for n in v.prompt_names if not str(n).strip()]
  if blank:
    raise UserError("image_text.prompt_names has a blank name; give one name per class of the data, in its order")
  if v.text_len < 2:
    raise UserError(f"image_text.text_len must be at least 2 (a word and the end-of-text token), got {v.text_len}")
  if v.embed_dim < 0:
    raise UserError(f"image_text.embed_dim must be 0 (the model's published size) or positive, got {v.embed_dim}")
  if min(d.caption_train, d.caption_test, d.caption_unseen) < 1:
    raise UserError("data.caption_train, caption_test and caption_unseen must each be at least 1, got "
                    f"{d.caption_train}, {d.caption_test}, {d.caption_unseen}")
  if v.lock_image and cfg.optim.weight_decay > 0 and not cfg.optim.freeze:
    raise UserError("image_text.lock_image gives the image tower no gradient, but optim.weight_decay would still "
                    "shrink it: set optim.weight_decay=0, or lock it with optim.freeze='^img' instead (the same, "
                    "with the decay masked)")
