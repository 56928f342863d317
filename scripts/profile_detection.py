"""Where the time of a detection train step goes: imgrec's FCOS step and its pieces, beside torchvision's FCOS,
on the configuration of scripts/bench_detection.py (ResNet-18, 256-wide FPN on P3-P7, four GroupNorm convs per
tower, batch 16 of 96x96 digit_boxes images, AdamW).

  python scripts/profile_detection.py --rounds 5
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python scripts/profile_detection.py --rounds 5 --torch-threads 1   # one thread each: steadier under load

Each piece is jitted (imgrec) once, then the pieces run in turn, round after round, so that a change of the shared
machine's load hits them all; the table gives each one's median milliseconds and its share of the full step.
Pieces (imgrec): the full train step; forward + backward of the model with a plain sum as the loss; of the backbone
alone; the FCOS loss (target assignment + focal, GIoU, centerness) with its gradient, on fixed model outputs; the
AdamW update alone. torchvision (its Python part, imported as tests/torch_reference.py does): the full step
(model(images, targets), backward, AdamW), and the model's forward + backward with a plain sum.
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from imgrec import config, optim, state as train_state, steps, tasks  # noqa: E402
from imgrec.tasks.detection import loss as det_loss  # noqa: E402


def imgrec_config(a):
  c = config.load(os.path.join(ROOT, "configs", "detection_digits.py"))
  c.model.name, c.model.kwargs.width = "resnet18", 64
  c.detection.fpn_channels, c.detection.head_convs, c.detection.levels = 256, 4, (3, 4, 5, 6, 7)
  c.data.digit_boxes_train, c.data.digit_boxes_test, c.data.digit_boxes_size = a.batch, 1, a.size
  c.data.pp_train = c.data.pp_eval = f"decode|letterbox({a.size})"
  c.data.val_fraction, c.batch_size = 0.0, a.batch
  c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.grad_clip = "adamw", 1e-3, 1e-4, 0.0
  return c


def timed(fn, *args):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) * 1e3


def imgrec_pieces(a):
  """{piece: zero-argument callable running it once}, everything compiled."""
  cfg = imgrec_config(a)
  task = tasks.get("detection")
  ds = task.open_data(cfg.data)
  split = ds.split("train")
  examples = [split.example(i, False, None) for i in range(a.batch)]
  batch = {k: np.stack([e[k] for e in examples]) for k in split.spec}
  info = {"class_names": list(ds.class_names), "image_shape": list(ds.image_shape), "mean": [0.5] * 3,
          "std": [0.25] * 3, "num_train": len(split)}
  model = task.create_model(cfg, info)
  tx, _ = optim.make(cfg, 1000, 100)
  state = jax.jit(lambda: train_state.init_state(model, tx, 0, tuple(info["image_shape"]), False))()
  step = jax.jit(steps.make_train_step(model, tx, info["mean"], info["std"], task.make_inputs(cfg, info),
                                       task.make_loss(cfg, info), cfg))
  x = steps.standardize(steps.to_float(jnp.asarray(batch["image"])), info["mean"], info["std"])
  targets = {k: jnp.asarray(batch[k]) for k in ("boxes", "classes", "box_mask")}
  variables = lambda p: {"params": p, "batch_stats": state.batch_stats}

  def model_sum(p):
    out, _ = model.apply(variables(p), x, train=True, mutable=["batch_stats"])
    return out["logits"].sum() + out["ltrb"].sum() + out["centerness"].sum()
  model_grad = jax.jit(jax.grad(model_sum))

  def backbone_sum(p):
    feats, _ = model.apply(variables(p), x, train=True, mutable=["batch_stats"],
                           method=lambda m, y, train: m.backbone(y, train=train))
    return sum(f.sum() for f in feats)
  backbone_grad = jax.jit(jax.grad(backbone_sum))
  outputs, _ = jax.jit(lambda p: model.apply(variables(p), x, train=True, mutable=["batch_stats"]))(state.params)
  d = cfg.detection
  loss_grad = jax.jit(jax.grad(lambda o: det_loss.fcos_loss({**o, "points": outputs["points"]}, targets,
                                                            d.cls_weight, d.box_weight, d.ctr_weight, d.l1_weight,
                                                            d.center_radius)[0]))
  float_out = {k: outputs[k] for k in ("logits", "ltrb", "centerness")}
  grads = model_grad(state.params)
  update = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
  pieces = {"imgrec step": lambda: step(state, batch)[1]["loss"],
            "imgrec model fwd+bwd (sum)": lambda: model_grad(state.params),
            "imgrec backbone fwd+bwd (sum)": lambda: backbone_grad(state.params),
            "imgrec FCOS loss fwd+bwd": lambda: loss_grad(float_out),
            "imgrec AdamW update": lambda: update(grads, state.opt_state, state.params)}
  for fn in pieces.values():  # compile
    jax.block_until_ready(fn())
  return pieces, batch


def torch_pieces(a, batch):
  sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "scripts")]
  import torch_reference  # noqa: F401  (lets torchvision's Python part import beside the CPU torch)
  import torch
  import bench_detection_torchvision as tv  # its build(): the benchmark's torchvision FCOS
  if a.torch_threads:
    torch.set_num_threads(a.torch_threads)
  torch.manual_seed(0)
  model = tv.build(10, a.size)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in batch["image"]]
  targets = [{"boxes": torch.from_numpy(b[m]), "labels": torch.from_numpy(c[m]).long()}
             for b, c, m in zip(batch["boxes"], batch["classes"], batch["box_mask"])]

  def full():
    losses = model(images, targets)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()

  stacked = torch.stack(images)

  def body():
    feats = list(model.backbone(stacked).values())
    out = model.head(feats)
    opt.zero_grad()
    sum(v.sum() for v in out.values()).backward()

  for fn in (full, body):
    fn()
  return {"torchvision step": full, "torchvision model fwd+bwd (sum)": body}, torch.get_num_threads()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", type=int, default=96)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  a = p.parse_args()
  pieces, batch = imgrec_pieces(a)
  threads = None
  if not a.no_torch:
    more, threads = torch_pieces(a, batch)
    pieces.update(more)
  times = {k: [] for k in pieces}
  for r in range(a.rounds):
    for k, fn in pieces.items():
      times[k].append(timed(fn))
    print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"\n| piece (batch {a.batch}, {a.size}x{a.size}; torch threads {threads}) | median ms | of its step |")
  print("|---|---:|---:|")
  for k, m in med.items():
    whole = med["imgrec step"] if k.startswith("imgrec") else med.get("torchvision step", float("nan"))
    print(f"| {k} | {m:.0f} | {m / whole:.0%} |")
  if "torchvision step" in med:
    print(f"\ntrain speed imgrec/torchvision (step time ratio, medians): "
          f"{med['torchvision step'] / med['imgrec step']:.2f}x")


if __name__ == "__main__":
  main()
