"""ViT-S/16 on ImageNet-1k: big_vision's "better plain ViT baselines" recipe (arXiv 2205.01580).

  imgrec train --config configs/imagenet_vit_s16.py:source=folder:/data/imagenet --workdir runs/vit_s16
  imgrec train --config configs/imagenet_vit_s16.py --workdir runs/vit_s16                 # tfds:imagenet2012
  imgrec train --config configs/imagenet_vit_s16.py --config.epochs=300 --workdir runs/vit_s16_300
  imgrec train --config configs/imagenet_vit_s16.py:source=folder:DIR,tiny=True --workdir /tmp/vit  # CPU smoke

Target, NOT measured here (no ImageNet and no accelerator on this machine): big_vision's published
ViT-S/16, 76.5% top-1 after 90 epochs in 6-7 h on a TPU v3-8, 80.0% after 300 epochs.

Recipe: batch 1024, Adam (b1 0.9, b2 0.999) lr 1e-3 with 10k warmup steps then cosine, decoupled weight
decay 1e-4 (big_vision's wd is not scaled by the lr: optax's adamw scales it, hence 0.1 here), global-norm
clip 1.0, global average pooling; host preprocessing decode|random_resized_crop(224, scale=(0.05, 1))|flip
(big_vision's inception crop keeps >= 5% of the area), RandAugment(2, 10) and mixup 0.2 on device; pixels to
[-1, 1] (mean 0.5, std 0.5). Not the same as the reference: learned (not sin-cos) position embeddings, no
pre-logits layer, and big_vision trains on train[:99%] (train[99%:] as minival) where this uses all of train.
"""
from configs.common import imagenet


def get_config(arg=None):
  c = imagenet(arg, "vit_s16", {"pool": "gap"}, {"pool": "gap", "width": 32, "depth": 2, "heads": 2, "mlp_dim": 64,
                                                 "patch": 8},
               batch_size=1024, epochs=90.0, pp_train_crop="random_resized_crop({size}, scale=(0.05, 1.0))")
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.data.augment = "randaugment(2, 10)|mixup(0.2)"
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.1
  c.optim.grad_clip = 1.0
  c.optim.warmup_steps = 10_000 if c.steps == 0 else max(1, c.steps // 10)
  c.optim.schedule = "cosine"
  return c
