"""ResNet-50 on ImageNet-1k: the Flax ImageNet example's recipe.

  imgrec train --config configs/imagenet_resnet50.py:source=folder:/data/imagenet --workdir runs/rn50
  imgrec train --config configs/imagenet_resnet50.py --workdir runs/rn50        # tfds:imagenet2012
  imgrec train --config configs/imagenet_resnet50.py:source=folder:DIR,tiny=True --workdir /tmp/rn50  # CPU smoke

Target, NOT measured here (no ImageNet and no accelerator on this machine): the Flax example's
published ResNet-50, 100 epochs, 76.47% top-1 on 8x V100 with mixed precision in 5.0 h (batch 2048),
76.72% in float32 in 13.7 h (batch 512).

Recipe: batch 1024, SGD Nesterov momentum 0.9, lr 0.1 x batch / 256 with 5 warmup epochs then cosine
to 0 over 100 epochs, L2 1e-4 on the kernels (SGD adds weight_decay to the gradient), bfloat16 compute;
host preprocessing decode|random_resized_crop(224)|flip, eval decode|resize_small(256)|central_crop(224);
ImageNet mean/std. Like the reference, the last BatchNorm scale of each block is zero-initialised
(imgrec/models/resnet.py: bn2 of a basic block, bn3 of a bottleneck), so each block starts as the identity.
"""
from configs.common import imagenet


def get_config(arg=None):
  c = imagenet(arg, "resnet50", {}, {"width": 8, "stage_sizes": (1, 1, 1, 1)}, batch_size=1024, epochs=100.0)
  c.data.norm = "imagenet"
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.lr = 0.1 * c.batch_size / 256
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 5.0
  c.optim.schedule = "cosine"
  return c
