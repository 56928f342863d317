"""The torchvision side of scripts/bench_segmentation.py: torchvision's FCN (its `FCN` and `FCNHead` on a
`resnet18(weights=None)` body, or `fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False)`) trained
from scratch on a seg:DIR folder, with the budget bench_segmentation.py gives it. Imports no imgrec: it writes
the test split's confusion matrix, which the caller scores with imgrec's mIoU code (the same for both sides).

  python scripts/bench_segmentation_torchvision.py --data DIR --steps 300 --batch 16 --lr 1e-3 --out r.json

DIR is what `imgrec make-segmentation-data DIR` writes: images/, masks/ (class ids), train.txt, test.txt,
classes.txt. Prints a progress line with img/s; writes {"confusion", "train_img_per_sec", ...} to --out.
"""
import argparse
import importlib.util
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image
from torch import nn


def _torchvision_importable():
  """torchvision's compiled ops may not load beside this torch (a CUDA build of torchvision beside the CPU torch
  wheel); its import then fails on registering fakes for nms/qnms. Defining those op schemas lets the Python
  part import; FCN uses no compiled op."""
  spec = importlib.util.find_spec("torchvision")
  try:
    torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
  except OSError:
    for op in ("nms", "qnms"):
      torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_torchvision_importable()
from torchvision.models import resnet18  # noqa: E402
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402
from torchvision.models.segmentation import fcn_resnet50  # noqa: E402
from torchvision.models.segmentation.fcn import FCN, FCNHead  # noqa: E402


def load_split(root, split):
  """(uint8 images [N, 3, H, W] tensor, int64 label maps [N, H, W] tensor) of a split."""
  with open(os.path.join(root, f"{split}.txt")) as f:
    stems = [line.strip() for line in f if line.strip()]
  images = np.stack([np.asarray(Image.open(os.path.join(root, "images", s + ".png")).convert("RGB")) for s in stems])
  masks = np.stack([np.asarray(Image.open(os.path.join(root, "masks", s + ".png"))) for s in stems])
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks.astype(np.int64))


def build(name, num_classes):
  if name == "fcn_resnet50":
    return fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=num_classes)
  body = IntermediateLayerGetter(resnet18(weights=None), {"layer4": "out"})
  return FCN(body, FCNHead(512, num_classes))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True)
  p.add_argument("--model", default="resnet18", choices=("resnet18", "fcn_resnet50"))
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--batch", type=int, required=True)
  p.add_argument("--lr", type=float, required=True)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--warmup", type=int, default=50)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  with open(os.path.join(a.data, "classes.txt")) as f:
    k = len([line for line in f if line.strip()])
  x_train, y_train = load_split(a.data, "train")
  x_test, y_test = load_split(a.data, "test")
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  norm = lambda x: (x.float() / 255.0 - mean) / std
  model = build(a.model, k)
  opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
  warm_cos = lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * s / a.steps))
  sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cos)
  loss_fn = nn.CrossEntropyLoss(ignore_index=255)
  rng = np.random.default_rng(a.seed)
  order = np.array([], np.int64)
  model.train()
  timed_from, t0, seen = min(10, a.steps // 10), None, 0
  for step in range(a.steps):
    if step == timed_from:  # the first steps (allocator warm-up) are not throughput
      t0, seen = time.perf_counter(), 0
    while len(order) < a.batch:
      order = np.concatenate([order, rng.permutation(len(x_train))])
    idx, order = torch.from_numpy(order[:a.batch]), order[a.batch:]
    loss = loss_fn(model(norm(x_train[idx]))["out"], y_train[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    seen += len(idx)
    if (step + 1) % 50 == 0 or step + 1 == a.steps:
      rate = seen / (time.perf_counter() - t0) if t0 else float("nan")
      print(f"torchvision step {step + 1}/{a.steps} loss {loss.item():.4f} {rate:.1f} img/s", flush=True)
  train_rate = seen / (time.perf_counter() - t0)
  model.eval()
  confusion = np.zeros((k, k), np.int64)
  with torch.no_grad():
    for start in range(0, len(x_test), a.batch):
      pred = model(norm(x_test[start:start + a.batch]))["out"].argmax(1).numpy()
      truth = y_test[start:start + a.batch].numpy()
      ok = truth != 255
      confusion += np.bincount(truth[ok] * k + pred[ok], minlength=k * k).reshape(k, k)
  result = {"confusion": confusion.tolist(), "train_img_per_sec": train_rate, "steps": a.steps, "batch": a.batch,
            "model": a.model, "torch": torch.__version__, "threads": torch.get_num_threads()}
  with open(a.out, "w") as f:
    json.dump(result, f)
  print(json.dumps({k: v for k, v in result.items() if k != "confusion"}), flush=True)


if __name__ == "__main__":
  main()
