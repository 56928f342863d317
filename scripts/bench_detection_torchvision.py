"""The torchvision side of scripts/bench_detection.py: FCOS (torchvision's, `weights=None`) trained from scratch on a
COCO-format set and scored by pycocotools, with the budget bench_detection.py gives it. Imports no imgrec: it runs
in a separate environment that has torch and torchvision (`pip install torch torchvision pycocotools`).

  python scripts/bench_detection_torchvision.py --data DIR --size 128 --steps 600 --batch 16 --lr 1e-3 --out r.json

DIR holds a COCO-format set as `imgrec make-detection-data` writes it: annotations/instances_{train,test}.json and
train/, test/ image folders. Prints a progress line with img/s; writes {"AP", ..., "train_img_per_sec"} to --out.
"""
import argparse
import contextlib
import io
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def load_split(root, split):
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
  cats = sorted(coco.getCatIds())
  index = {c: i for i, c in enumerate(cats)}
  items = []
  for image_id in sorted(coco.getImgIds()):
    info = coco.loadImgs(image_id)[0]
    image = np.array(Image.open(os.path.join(root, split, info["file_name"])).convert("RGB"))
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns], np.float32).reshape(-1, 4)
    labels = np.array([index[a["category_id"]] for a in anns], np.int64)
    items.append((image_id, torch.from_numpy(image).permute(2, 0, 1).contiguous(), boxes, labels))
  return coco, cats, items


def build(num_classes, size):
  backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                                 trainable_layers=5, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))
  # The same image size as imgrec (no resize inside the model), and COCO-style evaluation thresholds.
  return FCOS(backbone, num_classes, min_size=size, max_size=size, score_thresh=0.05, nms_thresh=0.6,
              detections_per_img=100, topk_candidates=1000)


def batches(items, batch, steps, seed, flip=False):
  rng = np.random.default_rng(seed)
  order = np.array([], np.int64)
  for _ in range(steps):
    while len(order) < batch:
      order = np.concatenate([order, rng.permutation(len(items))])
    idx, order = order[:batch], order[batch:]
    images, targets = [], []
    for i in idx:
      _, image, boxes, labels = items[i]
      image, boxes = image.float() / 255.0, boxes.copy()
      if flip and rng.random() < 0.5:  # horizontal flip (off by default: digits are not mirror-symmetric)
        image = image.flip(-1)
        w = image.shape[-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
      images.append(image)
      targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
    yield images, targets


def evaluate(model, coco, cats, items, batch):
  model.eval()
  results = []
  with torch.no_grad():
    for start in range(0, len(items), batch):
      chunk = items[start:start + batch]
      outs = model([image.float() / 255.0 for _, image, _, _ in chunk])
      for (image_id, _, _, _), out in zip(chunk, outs):
        for box, score, label in zip(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()):
          x0, y0, x1, y1 = (float(v) for v in box)
          results.append({"image_id": int(image_id), "category_id": int(cats[int(label)]),
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
  if not results:
    return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
  with contextlib.redirect_stdout(io.StringIO()):
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
  return {n: float(v) for n, v in zip(names, ev.stats)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True)
  p.add_argument("--size", type=int, required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--batch", type=int, required=True)
  p.add_argument("--lr", type=float, required=True)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--warmup", type=int, default=50)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--flip", action="store_true", help="random horizontal flips")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  _, cats, train_items = load_split(a.data, "train")
  coco, _, test_items = load_split(a.data, "test")
  model = build(len(cats), a.size)
  opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
  warm_cos = lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * s / a.steps))
  sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cos)
  model.train()
  timed_from, t0, seen = min(10, a.steps // 10), None, 0
  for step, (images, targets) in enumerate(batches(train_items, a.batch, a.steps, a.seed, a.flip)):
    if step == timed_from:  # the first steps (allocator warm-up) are not throughput
      t0, seen = time.perf_counter(), 0
    losses = model(images, targets)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    seen += len(images)
    if (step + 1) % 50 == 0 or step + 1 == a.steps:
      rate = seen / (time.perf_counter() - t0) if t0 else float("nan")
      print(f"torchvision step {step + 1}/{a.steps} loss {loss.item():.4f} {rate:.1f} img/s", flush=True)
  train_rate = seen / (time.perf_counter() - t0)
  result = evaluate(model, coco, cats, test_items, a.batch)
  result.update(train_img_per_sec=train_rate, steps=a.steps, batch=a.batch, size=a.size,
                torch=torch.__version__, threads=torch.get_num_threads())
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
