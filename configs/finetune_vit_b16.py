"""Fine-tune a pretrained ViT-B/16 (any checkpoint `imgrec import` reads) on a folder or tfds set.

  imgrec import ViT-B_16.npz --out runs/vit_b16_i21k               # AugReg / ViT-repository .npz, timm, HF, ...
  imgrec train --config configs/finetune_vit_b16.py:init=runs/vit_b16_i21k,source=tfds:cifar10 --workdir runs/ft
  imgrec train --config configs/finetune_vit_b16.py:init=PATH,source=folder:/data/pets,size=224,steps=500 ...

The model (name, options such as the GELU form, head-less or not) and the normalisation come from the
checkpoint (`checkpoint_import.describe`); the head is new (transfer.reinit, the default) and the position
embedding is resampled to `size`.

Published reference, NOT measured here (no pretrained weights can be fetched and no accelerator on this
machine): the ViT repository (google-research/vision_transformer, README "Expected results") fine-tunes its
ImageNet-21k ViT-B/16 to CIFAR-10 98.9-99.0% and CIFAR-100 92.3-92.6% (10k steps, 7-8 h on 8 V100), and with
500 steps / 50 warm-up to 98.6% / 89.2% (17 min), 1000 / 100 to 98.9% / 91.2% (39 min), at batch 512, SGD with
momentum 0.9, cosine decay, gradient clipping at norm 1, no weight decay, 384 px. This recipe follows those
settings (steps=500 by default); its crop is random_resized_crop(scale 0.5-1) where the repository resizes and
crops at random.

Arguments: init=PATH (required), source=tfds:cifar10 | folder:DIR, size=384, steps=500, lr=0.03, batch=512.
"""
from configs.common import finetune


def get_config(arg=None):
  c = finetune(arg, "vit_", size=384, steps=500, lr=0.03, batch=512)
  c.optim.momentum = 0.9
  return c
