"""Fine-tune a pretrained ConvNeXt-T (timm or Hugging Face, any checkpoint `imgrec import` reads) on a folder or
tfds set.

  imgrec import convnext_tiny.fb_in22k/ --out runs/cnx_t_22k        # a timm / HF model folder
  imgrec train --config configs/finetune_convnext_t.py:init=runs/cnx_t_22k,source=folder:/data/pets --workdir runs/ft
  imgrec train --config configs/finetune_convnext_t.py:init=PATH,source=tfds:cifar100,steps=2000 --workdir runs/ft

The model and the normalisation come from the checkpoint (`checkpoint_import.describe`); the head is new.

Published reference, NOT measured here (no pretrained weights can be fetched and no accelerator on this
machine): the ConvNeXt paper (Liu et al. 2022) fine-tunes ImageNet-22k ConvNeXt-T to ImageNet-1k at 224 px to
82.9% top-1 (30 epochs, AdamW, lr 5e-5, batch 512; from scratch on ImageNet-1k: 82.1%). No CIFAR or folder-set
figure is published for it. This recipe keeps AdamW, lr 5e-5, batch 512, 224 px and cosine decay with 10%
warm-up, over `steps` (1000 by default) rather than 30 ImageNet epochs, with weight decay 0.05 (imgrec's choice,
not the paper's), without the paper's layer-wise lr decay and EMA (`--config.transfer.lr_mults` and
`--config.optim.ema_decay` add them).

Arguments: init=PATH (required), source=tfds:cifar10 | folder:DIR, size=224, steps=1000, lr=5e-5, batch=512.
"""
from configs.common import finetune


def get_config(arg=None):
  c = finetune(arg, "convnext_", size=224, steps=1000, lr=5e-5, batch=512, optim_name="adamw")
  c.optim.weight_decay = 0.05
  return c
