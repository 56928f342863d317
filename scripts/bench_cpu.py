"""CPU training throughput: imgrec's real train step vs. the same network in PyTorch eager.

  python scripts/bench_cpu.py [--config configs/fashion_mnist_cnn.py] [--steps 30]
  python scripts/bench_cpu.py --config configs/fashion_mnist_resnet.py --set model.kwargs.width=64 --steps 12

Both sides train the same architecture (the config's small CNN, or ResNet-18 with the CIFAR stem:
torch's written out below with the same widths, BatchNorm and zero-initialised last BN scale) with
AdamW (same lr, weight decay off for biases and BN as in imgrec) on the same real Fashion-MNIST batch
(synthetic if the files are missing), side by side in one run: the two sides alternate in rounds of
`--round` steps, so that load from other jobs falls on both alike; prints the median step time of
each as img/s and their ratio. Needs `pip install torch==2.13.0`.
Also times one 3x3 32->64 convolution on 256x28x28 (forward, input gradient, kernel
gradient) through XLA's convolution and through imgrec's layers.Conv.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import config as config_lib, parallel, workdir as wd
from imgrec.data import sources
from imgrec.tasks import classification


def interleaved_times(fns, steps, warmup=3, round_steps=3):
  """Per-step seconds of each of `fns`, run in alternating rounds of `round_steps` after `warmup` each."""
  for fn in fns:
    for _ in range(warmup):
      fn()
  times = [[] for _ in fns]
  while len(times[0]) < steps:
    for fn, ts in zip(fns, times):
      for _ in range(min(round_steps, steps - len(ts))):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
  return times


def median_time(fn, steps, warmup=3):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def imgrec_step(cfg, info, images, labels):
  """A closure running one real imgrec train step (compiled here) and waiting for it."""
  mesh = parallel.make_mesh()
  built = wd.build(cfg, info, mesh)
  model, tx, init, shardings = built.model, built.tx, built.init, built.shardings
  state = jax.jit(init, out_shardings=shardings)()
  sharding = parallel.batch_sharding(mesh)
  step = jax.jit(classification.make_train_step(model, tx, info, cfg),
                 in_shardings=(shardings, sharding), out_shardings=(shardings, None), donate_argnums=(0,))
  batch = jax.device_put({"image": images, "label": labels}, sharding)
  box = [state]

  def run():
    box[0], metrics = step(box[0], batch)
    jax.block_until_ready(metrics["loss"])
  run.params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return run


def torch_model(kw, in_ch, size, num_classes):
  import torch.nn as tnn
  layers, ch = [], in_ch
  for width in kw.get("widths", (32, 64)):
    for _ in range(kw.get("convs_per_stage", 1)):
      bn = kw.get("batch_norm", True)
      layers += [tnn.Conv2d(ch, width, 3, padding=1, bias=not bn)] + ([tnn.BatchNorm2d(width)] if bn else []) + [
          tnn.ReLU()]
      ch = width
    if size >= 2:
      layers.append(tnn.MaxPool2d(2))
      size //= 2
  layers += [tnn.Flatten(), tnn.Linear(ch * size * size, kw.get("hidden", 128)), tnn.ReLU(),
             tnn.Dropout(kw.get("dropout", 0.2)), tnn.Linear(kw.get("hidden", 128), num_classes)]
  return tnn.Sequential(*layers)


def torch_resnet(kw, in_ch, num_classes, stage_sizes=(2, 2, 2, 2)):
  """imgrec's ResNet (basic blocks, CIFAR stem: 3x3 stride-1 conv, no max-pool) in torch."""
  import torch
  import torch.nn as tnn
  width = kw.get("width", 64)

  def bn(ch, zero=False):
    b = tnn.BatchNorm2d(ch, eps=1e-5, momentum=0.1)  # torch's 0.1 = flax's momentum 0.9
    if zero:
      tnn.init.zeros_(b.weight)
    return b

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = bn(cout)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = bn(cout, zero=True)
      self.proj = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
                   if stride != 1 or cin != cout else None)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  layers, ch = [tnn.Conv2d(in_ch, width, 3, 1, 1, bias=False), bn(width), tnn.ReLU()], width
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      layers.append(Block(ch, width * 2**i, 2 if i > 0 and j == 0 else 1))
      ch = width * 2**i
  layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(ch, num_classes)]
  return tnn.Sequential(*layers)


def torch_step(cfg, info, images, labels):
  """A closure running one torch eager train step of the same network and optimiser."""
  import torch
  h, w, c = info["image_shape"]
  if cfg.model.name == "resnet18":
    model = torch_resnet(cfg.model.kwargs.to_dict(), c, len(info["class_names"]))
  elif cfg.model.name == "small_cnn":
    model = torch_model(cfg.model.kwargs.to_dict(), c, h, len(info["class_names"]))
  else:
    raise SystemExit(f"no torch twin for {cfg.model.name}; use small_cnn or resnet18")
  decay = [p for p in model.parameters() if p.ndim > 1]  # imgrec: no decay on biases and BN scales
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.optim.lr)
  mean, std = torch.tensor(info["mean"]).view(1, -1, 1, 1), torch.tensor(info["std"]).view(1, -1, 1, 1)
  x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels.astype(np.int64))
  model.train()

  def run():
    x = (x_u8.float() / 255.0 - mean) / std
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
  run.params = sum(p.numel() for p in model.parameters())
  return run


def conv_times(steps):
  """forward / input-grad / kernel-grad seconds of one conv, XLA's and imgrec's."""
  import flax.linen as nn
  from imgrec.models import layers
  x = jax.random.normal(jax.random.key(0), (256, 28, 28, 32))
  out = {}
  for name, cls in (("xla", nn.Conv), ("imgrec", layers.Conv)):
    conv = cls(64, (3, 3), padding="SAME", use_bias=False)
    params = conv.init(jax.random.key(1), x[:1])
    fwd = jax.jit(lambda p, x: conv.apply(p, x))
    dx = jax.jit(jax.grad(lambda x, p: jnp.sum(conv.apply(p, x) ** 2)))
    dw = jax.jit(jax.grad(lambda p, x: jnp.sum(conv.apply(p, x) ** 2)))
    out[name] = {
        "forward_ms": 1e3 * median_time(lambda: fwd(params, x).block_until_ready(), steps),
        "input_grad_ms": 1e3 * median_time(lambda: dx(x, params).block_until_ready(), steps),
        "kernel_grad_ms": 1e3 * median_time(lambda: jax.block_until_ready(dw(params, x)), steps)}
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/fashion_mnist_cnn.py")
  p.add_argument("--steps", type=int, default=30, help="timed steps per side (after 3 warm-up steps)")
  p.add_argument("--round", type=int, default=3, help="steps per side before switching to the other side")
  p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE, e.g. model.kwargs.width=16")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-conv", action="store_true", help="skip the single-convolution timings")
  args = p.parse_args()
  cfg = config_lib.load(args.config)
  config_lib.override(cfg, args.set)
  try:
    ds = sources.load(cfg.data)
  except Exception as e:  # missing data: same shapes, synthetic pixels
    print(f"({e}; using synthetic 28x28 data)")
    cfg.data.source = "digits"
    ds = None
  if ds is not None:
    info = wd.data_info(cfg, ds)
    images, labels = ds.split("train").get(np.arange(cfg.batch_size))
  else:
    info = {"class_names": [str(i) for i in range(10)], "image_shape": [28, 28, 1], "mean": [0.5], "std": [0.25],
            "num_train": 60000}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (cfg.batch_size, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, cfg.batch_size).astype(np.int32)
  results = {"config": args.config, "batch_size": cfg.batch_size, "model": cfg.model.name,
             "model_kwargs": cfg.model.kwargs.to_dict()}
  sides = [imgrec_step(cfg, info, images, labels)]
  if not args.no_torch:
    import torch
    results["torch_threads"] = torch.get_num_threads()
    sides.append(torch_step(cfg, info, images, labels))
  results["params"] = [side.params for side in sides]  # imgrec, torch: the same network has the same count
  times = interleaved_times(sides, args.steps, round_steps=args.round)
  t_jax = statistics.median(times[0])
  results["imgrec_img_per_sec"] = cfg.batch_size / t_jax
  results["cpu_count"] = os.cpu_count()
  if not args.no_torch:
    t_torch = statistics.median(times[1])
    results["torch_eager_img_per_sec"] = cfg.batch_size / t_torch
    results["ratio_imgrec_over_torch"] = t_torch / t_jax
  results["load_average"] = os.getloadavg()
  if not args.no_conv:
    results["conv_3x3_32to64_256x28x28"] = conv_times(max(3, args.steps // 6))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
