"""FCOS with a ResNet-50 backbone on COCO 2017, from an ImageNet-pretrained ResNet-50: torchvision's FCOS recipe.

  imgrec train --config configs/coco_fcos_resnet50.py:source=coco:/data/coco,init=/ckpt/resnet50.pth --workdir runs/fcos
  imgrec eval --workdir runs/fcos          # COCO AP on val2017 (the `test` split of coco:DIR)
  imgrec make-detection-data /tmp/dbx && \\
  imgrec train --config configs/coco_fcos_resnet50.py:source=coco:/tmp/dbx,tiny=True --workdir /tmp/fcos  # CPU smoke

`source`: a COCO 2017 folder (annotations/instances_{train,val}2017.json, train2017/, val2017/). `init`: any
ImageNet ResNet-50 checkpoint `imgrec import` reads (torchvision's ResNet50_Weights.IMAGENET1K_V1 .pth, a timm
resnet50 safetensors file or folder, or an imported/trained imgrec workdir); its stages load into the detector's
backbone (`transfer.prefix = "backbone/"`) and the run normalises with the checkpoint's mean/std. Without `init`
the backbone starts from scratch (far below the reference).

Target, NOT measured here (no COCO and no accelerator on this machine): torchvision's fcos_resnet50_fpn
(FCOS_ResNet50_FPN_Weights.COCO_V1), box AP 39.2 on val2017, trained 26 epochs at batch 16, SGD momentum 0.9,
lr 0.01, weight decay 1e-4, lr x0.1 at epochs 16 and 22, images resized to a short side of 800 (long side at
most 1333), flips, an ImageNet-pretrained backbone, mixed precision.

What differs here, on purpose: static shapes, so every image is letterboxed to one 1024 px square (a 640x480
COCO image gets a 768 px short side rather than 800), and training adds a mild scale jitter
(random_scale_crop(1024, scale=(0.8, 1.2)) then flip) rather than torchvision's fixed size. BatchNorm statistics
are computed over the whole global batch of 16 (the jitted step is sharded, not per-device), where torchvision
freezes them; bfloat16 compute.
"""
from configs.common import parse_arg
from imgrec.config import defaults


def get_config(arg=None):
  a = parse_arg(arg, source="coco:/data/coco", init="", size=1024, batch=16, epochs=26.0, tiny=False)
  c = defaults()
  c.task = "detection"
  c.data.source = a.source
  size = 64 if a.tiny and a.size == 1024 else a.size
  c.data.pp_train = f"decode|random_scale_crop({size}, scale=(0.8, 1.2))|flip"
  c.data.pp_eval = f"decode|letterbox({size})"
  c.data.max_boxes = 100
  c.model.name = "tiny" if a.tiny else "resnet50"
  c.model.dtype = "float32" if a.tiny else "bfloat16"
  c.transfer.init_from = a.init
  c.transfer.prefix = "backbone/"
  c.batch_size = 8 if a.tiny and a.batch == 16 else a.batch
  c.epochs = a.epochs
  c.steps = 4 if a.tiny else 0
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.lr = 0.01 * c.batch_size / 16
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "step"
  c.optim.decay_epochs = (16.0, 22.0)
  c.optim.decay_factor = 0.1
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = 2 if a.tiny else 1000
  c.select_metric = "AP"
  c.log_every = 2 if a.tiny else 100
  c.eval_every = c.checkpoint_every = c.steps if a.tiny else 0
  return c
