"""Structured channel pruning: whole output channels of convolutions are removed, so the network
gets genuinely smaller (fewer parameters and FLOPs), not a dense one full of zeros.

What may be pruned is what changes no width outside one producer/consumer pair:
- small_cnn: every conv; the next conv's input channels (or the rows of `fc` that read the
  flattened map) shrink with it.
- ResNets (basic, bottleneck and their pre-activation forms): the inner channels of each
  residual block (basic: conv1's outputs; bottleneck: conv1's and conv2's). The residual stream
  (stem, block outputs, projections) keeps its width, so the additions still line up.

Importance of a channel: |gamma| of the BatchNorm that follows it (network slimming, Liu et al.
2017), or the L1 norm of its kernel (`criterion="l1"`, also the fallback where no BN follows).
Every prunable conv keeps its round((1 - sparsity) * n) most important channels (at least one),
in their original order. The smaller network is the same architecture with per-conv widths in
its kwargs (`conv_widths` for small_cnn, `inner_widths` for ResNets), so config.json rebuilds it
and every tool that restores a workdir (eval, serve, export) works on it unchanged.
"""
from typing import NamedTuple, Optional

import jax
import numpy as np

from imgrec import parallel, workdir as wd
from imgrec.errors import UserError
from imgrec.models import cnn, resnet


class Group(NamedTuple):
  """One prunable conv: its output channels, the norm after it, and the layer that reads them."""
  conv: str              # module path in the params tree, e.g. "stage1_block1/conv1"
  norm: Optional[str]    # BatchNorm right after it (sliced along with it), or None
  consumer: str          # conv whose input channels, or dense ("fc") whose flattened rows, shrink
  flat_input: bool = False  # consumer is a Dense reading the flattened (H, W, C) map


def groups(model):
  """(prunable Groups in kwarg order, the model kwarg that holds their widths)."""
  if isinstance(model, cnn.SmallCNN):
    names = [f"conv{i}_{j}" for i in range(len(model.widths)) for j in range(model.convs_per_stage)]
    out = []
    for k, name in enumerate(names):
      last = k == len(names) - 1
      out.append(Group(name, f"bn{name[4:]}" if model.batch_norm else None, "fc" if last else names[k + 1], last))
    return out, "conv_widths"
  if isinstance(model, resnet.ResNet):
    out = []
    for i, n_blocks in enumerate(model.stage_sizes):
      for j in range(n_blocks):
        block = f"stage{i + 1}_block{j + 1}"
        out += [Group(f"{block}/{c}", f"{block}/{n}", f"{block}/{r}") for c, n, r in resnet.INNER_CONVS[model.block]]
    return out, "inner_widths"
  raise UserError(f"channel pruning supports small_cnn and the ResNet family (resnet*, preact_resnet*, "
                  f"se_resnet*, wrn*), not {type(model).__name__}; use --method prune (magnitude) instead")


def importance(flat, group, criterion="bn"):
  """Per-output-channel importance of `group`'s conv in the flat variables {"params/a/b/kernel": ...}."""
  if criterion not in ("bn", "l1"):
    raise UserError(f"channel pruning criterion must be 'bn' (|gamma|) or 'l1' (kernel L1 norm), got {criterion!r}")
  if criterion == "bn" and group.norm is not None:
    return np.abs(np.asarray(flat[f"params/{group.norm}/scale"], np.float32))
  kernel = np.asarray(flat[f"params/{group.conv}/kernel"], np.float32)
  return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)


def keep_count(n, sparsity):
  return max(1, int(round(n * (1.0 - sparsity))))


def slice_group(flat, group, keep):
  """The flat variables with only channels `keep` (sorted indices) of `group`'s conv: its kernel (and
  bias), its norm's scale/bias/mean/var, and the consumer's input channels."""
  flat = dict(flat)
  p = f"params/{group.conv}"
  n_before = np.shape(flat[f"{p}/kernel"])[-1]
  flat[f"{p}/kernel"] = np.asarray(flat[f"{p}/kernel"])[..., keep]
  if f"{p}/bias" in flat:
    flat[f"{p}/bias"] = np.asarray(flat[f"{p}/bias"])[keep]
  if group.norm is not None:
    for key in (f"params/{group.norm}/scale", f"params/{group.norm}/bias",
                f"batch_stats/{group.norm}/mean", f"batch_stats/{group.norm}/var"):
      if key in flat:
        flat[key] = np.asarray(flat[key])[keep]
  key = f"params/{group.consumer}/kernel"
  w = np.asarray(flat[key])
  if group.flat_input:  # Dense rows index the flattened (H, W, C) map, C fastest
    flat[key] = w.reshape(-1, n_before, w.shape[-1])[:, keep, :].reshape(-1, w.shape[-1])
  else:  # conv kernel HWIO: input channels on axis 2
    flat[key] = w[:, :, keep, :]
  return flat


def prune(model, variables, sparsity, criterion="bn"):
  """Structured pruning of `variables` of `model` (small_cnn or a ResNet).

  Returns (pruned variables, {kwarg: per-conv widths} for the smaller model, [(conv, before, after)]).
  """
  if not 0 <= sparsity < 1:
    raise UserError(f"channel sparsity is the fraction of channels removed per conv, in [0, 1); got {sparsity}")
  todo, kwarg = groups(model)
  flat = wd.flatten(jax.device_get(variables))
  widths, rows = [], []
  for g in todo:
    score = importance(flat, g, criterion)
    n = len(score)
    keep = np.sort(np.argsort(-score, kind="stable")[:keep_count(n, sparsity)])
    flat = slice_group(flat, g, keep)
    widths.append(len(keep))
    rows.append((g.conv, n, len(keep)))
  return wd.unflatten(flat), {kwarg: tuple(widths)}, rows


def shrunk_config(cfg, kwargs):
  """`cfg` with the per-conv widths `kwargs` (what `prune` returned) in its model kwargs."""
  cfg = cfg.copy_and_resolve_references()
  cfg.model.kwargs.update(kwargs)
  return cfg


def prepare(source, out, sparsity, steps=200, lr_scale=0.3, criterion="bn"):
  """Channel-prunes `source`'s model into a new workdir `out`, ready to be fine-tuned `steps` steps by the trainer.

  `out` gets config.json (the smaller model's kwargs; lr x `lr_scale`, no warm-up, `steps` steps),
  dataset.json and a step-0 checkpoint of the sliced network; training `out` resumes from it, so the
  fine-tuning is an ordinary run (metrics.jsonl, curves.png, checkpoints).
  Returns (that config, {"rows", "params_before", "params_after", "kwargs"}).
  """
  run = wd.restore(source, params_only=True)
  variables = jax.device_get(run.variables)
  pruned, kwargs, rows = prune(run.model, variables, sparsity, criterion)
  new_cfg = shrunk_config(run.cfg, kwargs)
  new_cfg.transfer.init_from = ""
  new_cfg.distill.teacher = ""
  if steps > 0:
    new_cfg.steps, new_cfg.epochs = int(steps), 0.0
    new_cfg.optim.lr *= lr_scale
    new_cfg.optim.warmup_epochs, new_cfg.optim.warmup_steps = 0.0, 0
    new_cfg.eval_every = new_cfg.checkpoint_every = int(steps)
  params, batch_stats = pruned["params"], pruned.get("batch_stats", {})
  mesh = parallel.make_mesh()
  abstract = wd.build(new_cfg, run.info, mesh).abstract
  shapes = lambda t: jax.tree.map(np.shape, t)
  if shapes(params) != shapes(abstract.params) or shapes(batch_stats) != shapes(abstract.batch_stats):
    raise AssertionError("pruned variables do not fit the smaller model: a bug in imgrec.compress.channels")
  wd.write(out, new_cfg, run.info, wd.initial_state(new_cfg, run.info, mesh, params, batch_stats))
  count = lambda t: sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(t))
  before, after = count(variables["params"]), count(params)
  print(f"channel pruning {sparsity:.0%} ({criterion}): {before} -> {after} params, "
        + ", ".join(f"{c} {a}/{b}" for c, b, a in rows), flush=True)
  return new_cfg, {"rows": rows, "params_before": before, "params_after": after, "kwargs": kwargs}
