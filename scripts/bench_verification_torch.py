"""The PyTorch side of scripts/bench_verification.py: an ArcFace model of the same shape as the face_glyphs recipe
(small_cnn: 3 stages of 2 x [conv3x3, BN, ReLU] + max-pool, dense 256 + ReLU; then BN, dropout, linear 128, BN
without scale) trained with pytorch-metric-learning's ArcFaceLoss (same s, m, steps, batch, AdamW, lr, weight
decay, warmup + cosine, grad clip, rotation augmentation) on the same images in the same order of draws, and
judged by the same pairs protocol (imgrec's protocol.py, numpy) on the same held-out pairs.

  python scripts/bench_verification_torch.py [--steps N --threads 2 --out DIR]
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import tqdm
from pytorch_metric_learning import losses as pml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_verification import load_config  # noqa: E402
from imgrec.tasks import verification as task  # noqa: E402
from imgrec.tasks.verification import protocol  # noqa: E402


class Net(torch.nn.Module):
  def __init__(self, widths, convs, hidden, dim, channels=3, size=32):
    super().__init__()
    layers, c = [], channels
    for w in widths:
      for _ in range(convs):
        layers += [torch.nn.Conv2d(c, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w, momentum=0.1),
                   torch.nn.ReLU()]
        c = w
      if size >= 2:
        layers.append(torch.nn.MaxPool2d(2))
        size //= 2
    self.features = torch.nn.Sequential(*layers)
    self.fc = torch.nn.Linear(c * size * size, hidden)
    self.bn_in = torch.nn.BatchNorm1d(hidden, eps=2e-5, momentum=0.1)
    self.linear = torch.nn.Linear(hidden, dim)
    self.bn_out = torch.nn.BatchNorm1d(dim, eps=2e-5, momentum=0.1, affine=True)
    self.bn_out.weight.requires_grad_(False)  # insightface: the last BN learns only a shift

  def forward(self, x):
    x = F.relu(self.fc(self.features(x).flatten(1)))
    return self.bn_out(self.linear(self.bn_in(x)))


def rotate(x, deg, gen):
  """Random rotations up to `deg` degrees (bilinear, zero fill), like imgrec's rotate op."""
  a = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * math.radians(deg)
  cos, sin = torch.cos(a), torch.sin(a)
  theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(a)], 1),
                       torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1)
  grid = F.affine_grid(theta, x.shape, align_corners=False)
  return F.grid_sample(x, grid, align_corners=False)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "face_glyphs.py"))
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--threads", type=int, default=0)
  p.add_argument("--out", default="bench_verification")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  cfg = load_config(a.config)
  steps = a.steps or cfg.steps
  ds = task.open_data(cfg)
  train, test = ds.split("train"), ds.split("test")
  images = train.take(np.arange(len(train)))
  x_all = torch.from_numpy(images["image"]).permute(0, 3, 1, 2).float() / 255
  mean, std = x_all.mean((0, 2, 3), keepdim=True), x_all.std((0, 2, 3), keepdim=True)
  y_all = torch.from_numpy(images["label"].astype(np.int64))
  k = cfg.model.kwargs
  v = cfg.verification
  torch.manual_seed(cfg.seed)
  net = Net(k.widths, k.convs_per_stage, k.hidden, v.embedding_dim, size=ds.image_shape[0])
  loss_fn = pml.ArcFaceLoss(len(ds.class_names), v.embedding_dim, margin=math.degrees(v.margin), scale=v.scale)
  params = [q for q in net.parameters() if q.requires_grad] + list(loss_fn.parameters())
  opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
  warm = cfg.optim.warmup_steps
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else
                                            0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
  rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
  order, speeds, t = np.zeros(0, int), [], time.perf_counter()
  net.train()
  for i in tqdm.trange(steps, desc="torch arcface", unit="step"):
    if len(order) < cfg.batch_size:
      order = np.concatenate([order, rng.permutation(len(train))])
    idx, order = np.sort(order[:cfg.batch_size]), order[cfg.batch_size:]
    x = rotate(x_all[idx], 10.0, gen)
    loss = loss_fn(net((x - mean) / std), y_all[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip:
      torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    opt.step()
    sched.step()
    if (i + 1) % 100 == 0:
      now = time.perf_counter()
      speeds.append(100 * cfg.batch_size / (now - t))
      t = now
  net.eval()
  timg = torch.from_numpy(test.take(np.arange(len(test)))["image"]).permute(0, 3, 1, 2).float() / 255
  with torch.no_grad():
    e = torch.cat([net((timg[s:s + 512] - mean) / std) for s in range(0, len(timg), 512)]).numpy()
  scores = protocol.pair_scores(e, test.first, test.second)
  r = protocol.summary(scores, test.pairs.same, test.pairs.fold, v.calibrate_far)
  out = {"accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "tar_far1e3": r["tar_far1e3"],
         "eer": r["eer"], "train_img_per_sec": float(np.median(speeds[1:] or speeds)), "final_loss": float(loss),
         "steps": steps, "threads": torch.get_num_threads(), "torch": torch.__version__}
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "torch.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
