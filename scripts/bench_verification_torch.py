"""The PyTorch side of scripts/bench_verification.py: an ArcFace model of the same shape as the face_glyphs recipe
(small_cnn: 3 stages of 2 x [conv3x3, BN, ReLU] + max-pool, dense (model.kwargs.hidden) + ReLU; then BN,
linear (embedding_dim), BN without scale) trained with pytorch-metric-learning's ArcFaceLoss (same s, m, steps,
batch, AdamW, lr, weight decay, warmup + cosine, grad clip, rotation augmentation) on the same images in the
same order of draws, and judged by the same pairs protocol (imgrec's protocol.py, numpy) on the same held-out
pairs.

  python scripts/bench_verification_torch.py [train] [--steps N --threads 2 --class-init-std 0.01 --out DIR]
      the PyTorch run's held-out 10-fold accuracy, TAR@FAR=1e-3, EER and train images/s (OUT/torch_train.json)
  python scripts/bench_verification_torch.py speed [--rounds 8 --round-steps 20]
      train images/s of imgrec's step and this one side by side in one process, alternating timed rounds
      (OUT/torch_speed.json): the honest speed ratio on a shared machine
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
from pytorch_metric_learning.utils import common_functions as c_f

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bench_verification as bv  # noqa: E402
from bench_verification import batches  # noqa: E402
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


class TorchTrainer:
  """The PyTorch twin of bench_verification.Trainer: `run(k)` takes k steps on the next batches (the same draws)
  and returns the last loss; `evaluate(test)` the pairs protocol's record."""

  def __init__(self, cfg, ds, class_init_std=0.0):
    self.cfg, self.train = cfg, ds.split("train")
    images = self.train.take(np.arange(len(self.train)))
    self.x = torch.from_numpy(images["image"]).permute(0, 3, 1, 2).float() / 255
    self.mean, self.std = self.x.mean((0, 2, 3), keepdim=True), self.x.std((0, 2, 3), keepdim=True)
    self.y = torch.from_numpy(images["label"].astype(np.int64))
    k, v = cfg.model.kwargs, cfg.verification
    torch.manual_seed(cfg.seed)
    self.net = Net(k.widths, k.convs_per_stage, k.hidden, v.embedding_dim, size=ds.image_shape[0])
    # pml draws its identity weights from N(0, 1); imgrec from N(0, 0.01). Under Adam a weight moves about lr per
    # coordinate and step whatever its size, so the init's scale sets how fast the identities' directions turn.
    init = {"weight_init_func": c_f.TorchInitWrapper(torch.nn.init.normal_, std=class_init_std)
            } if class_init_std else {}
    self.loss = pml.ArcFaceLoss(len(ds.class_names), v.embedding_dim, margin=math.degrees(v.margin),
                                scale=v.scale, **init)
    self.params = [q for q in self.net.parameters() if q.requires_grad] + list(self.loss.parameters())
    self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    warm, total = cfg.optim.warmup_steps, cfg.steps
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: s / warm if s < warm else
                                                   0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    self.gen = torch.Generator().manual_seed(cfg.seed)
    self.draws = batches(len(self.train), cfg.batch_size, cfg.seed)

  def run(self, k):
    self.net.train()
    for _ in range(k):
      idx = next(self.draws)
      x = rotate(self.x[idx], 10.0, self.gen)
      loss = self.loss(self.net((x - self.mean) / self.std), self.y[idx])
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      if self.cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
      self.opt.step()
      self.sched.step()
    return float(loss)

  def evaluate(self, test):
    self.net.eval()
    timg = torch.from_numpy(test.take(np.arange(len(test)))["image"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
      e = torch.cat([self.net((timg[s:s + 512] - self.mean) / self.std) for s in range(0, len(timg), 512)]).numpy()
    r = protocol.summary(protocol.pair_scores(e, test.first, test.second), test.pairs.same, test.pairs.fold,
                         self.cfg.verification.calibrate_far)
    return {k: r[k] for k in ("accuracy", "accuracy_std", "tar_far1e3", "tar_far1e4", "eer")}


def train(cfg, ds, class_init_std=0.0):
  """The PyTorch ArcFace over cfg.steps steps: its record, train images/s (median of the log windows after the
  first), final loss."""
  record, speed, loss = bv.timed_run(TorchTrainer(cfg, ds, class_init_std), cfg, ds, "torch arcface")
  return {**record, "train_img_per_sec": speed, "final_loss": loss, "steps": cfg.steps}


def speed(cfg, ds, rounds, round_steps, class_init_std=0.0):
  """Train images/s of imgrec's ArcFace step and the PyTorch one, side by side in this process: a warm-up round
  of each (imgrec's compiles), then `rounds` timed rounds of `round_steps` steps, the order swapped every round
  (ABBA) so drift in the shared machine's load falls on both alike. Medians, and the median of the per-round
  imgrec / PyTorch ratios."""
  ours, theirs = bv.Trainer(cfg, ds), TorchTrainer(cfg, ds, class_init_std)
  ours.run(2), theirs.run(2)
  timed = {"imgrec": [], "torch": []}
  for r in tqdm.trange(rounds, desc="speed rounds", unit="round"):
    pair = [("imgrec", ours), ("torch", theirs)]
    for name, t in pair if r % 2 == 0 else pair[::-1]:
      start = time.perf_counter()
      t.run(round_steps)
      timed[name].append(round_steps * cfg.batch_size / (time.perf_counter() - start))
  ratios = np.asarray(timed["imgrec"]) / np.asarray(timed["torch"])
  return {"imgrec_img_per_sec": float(np.median(timed["imgrec"])),
          "torch_img_per_sec": float(np.median(timed["torch"])),
          "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
          "rounds": rounds, "round_steps": round_steps, "batch": cfg.batch_size, "threads": torch.get_num_threads(),
          "per_round": timed}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", nargs="?", default="train", choices=("train", "speed"))
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "face_glyphs.py"))
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--scale", type=float, default=0, help="ArcFace's s (0: the config's)")
  p.add_argument("--threads", type=int, default=0)
  p.add_argument("--seed", type=int, default=None, help="config.seed: init and batch draws (default: the config's)")
  p.add_argument("--class-init-std", type=float, default=0,
                 help="std of the identity weights' normal init (0: pml's default, 1; imgrec's is 0.01)")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--round-steps", type=int, default=20)
  p.add_argument("--out", default="bench_verification")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  cfg = bv.load_config(a.config)
  cfg.steps = a.steps or cfg.steps
  cfg.verification.scale = a.scale or cfg.verification.scale
  cfg.seed = cfg.seed if a.seed is None else a.seed  # the model's init and the batch draws; the pairs stay
  ds = task.open_data(cfg)
  if a.what == "train":
    out = {**train(cfg, ds, a.class_init_std), "class_init_std": a.class_init_std or 1.0,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
  else:
    out = speed(cfg, ds, a.rounds, a.round_steps, a.class_init_std)
  os.makedirs(a.out, exist_ok=True)
  tag = f"_init{a.class_init_std:g}" if a.class_init_std else ""
  with open(os.path.join(a.out, f"torch_{a.what}{tag}.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps({k: v for k, v in out.items() if k != "per_round"}))


if __name__ == "__main__":
  main()
