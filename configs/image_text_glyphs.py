"""Image-text on glyph_captions, the embedded caption set (coloured digits on coloured backgrounds): no download.

  imgrec train --config configs/image_text_glyphs.py --workdir runs/image_text_glyphs
  imgrec eval --workdir runs/image_text_glyphs   # report/: zero-shot confusion, examples with their top labels

4000 training images (32x32) with captions like "a red seven on a gray background", over 15 of the 20
colour/background pairs; evaluation on 500 test images of those pairs (retrieval, seen zero-shot) and 500 of the
5 held-out pairs (zero-shot "a photo of the digit {}": the digit named among ten, on combinations never seen).
A small SigLIP: ViT image tower (patch 4, width 64, 2 blocks, MAP pooling), word-level text tower (16 tokens,
width 64, 2 blocks), 64-d shared space, sigmoid loss, 600 steps of 128 with adamw.

Measured: see MEASURED below (filled in from a run of this config; the machine is a 2-core VM shared by ~8 jobs).
"""
from imgrec.config import defaults

MEASURED = "not yet measured"


def get_config(arg=None):
  del arg
  c = defaults()
  c.task = "image_text"
  c.data.source = "glyph_captions"
  c.data.caption_train = 4000
  c.data.caption_test = 500
  c.data.caption_unseen = 500
  c.model.name = "siglip_b16"
  c.model.kwargs.image = dict(patch=4, width=64, depth=2, heads=4, mlp_dim=128, pool="map")
  c.model.kwargs.text = dict(vocab_size=64, max_len=16, width=64, depth=2, heads=4, mlp_dim=128)
  c.image_text.loss = "sigmoid"
  c.image_text.embed_dim = 64
  c.image_text.text_len = 16
  c.batch_size = 128
  c.steps = 600
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 50
  c.optim.grad_clip = 1.0
  c.select_metric = "zeroshot_accuracy"
  c.eval_every = 200
  c.checkpoint_every = 200
  c.log_every = 50
  return c
