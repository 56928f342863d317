"""The trainer: `train(cfg, workdir)` reads top to bottom.

Numeric work is pure functions over explicit pytrees:
  train_step(state, batch) -> (state, metrics)
  eval_step(state, batch)  -> metric sums
jitted with the batch sharded over every device and the state replicated (or, with
`parallel.fsdp`, params and optimiser state sharded over the devices too).
"""
import functools
import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from imgrec import checkpoint, compile_cache, config as config_lib, losses, models, optim, parallel
from imgrec.data import augment, pipeline, sources
from imgrec.errors import UserError

log = logging.getLogger("imgrec")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key: saved by Orbax like any array
  ema_params: Any = None  # EMA of params when optim.ema_decay > 0, else an empty dict


def to_float(images):
  """uint8 -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def standardize(x, mean, std, dtype=jnp.float32):
  return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 NHWC -> standardised float, on device (host work and transfers stay uint8)."""
  return standardize(to_float(images), mean, std, dtype)


def variables(state_or_params, batch_stats=None):
  """Model variables for inference: the EMA params when the state keeps them."""
  if isinstance(state_or_params, TrainState):
    state = state_or_params
    state_or_params = state.ema_params if state.ema_params else state.params
    batch_stats = state.batch_stats
  return {"params": state_or_params, **({"batch_stats": batch_stats} if batch_stats else {})}


def make_train_step(model, tx, mean, std, cfg=None, objective=None):
  """The pure training step. `cfg` adds augmentation, label smoothing, penalties,
  accumulation and EMA; without it the step is plain cross-entropy.
  `objective(logits, soft_targets, x) -> scalar` replaces cross-entropy (distillation passes one)."""
  from imgrec.config import defaults
  cfg = cfg or defaults()
  ops = augment.parse(cfg.data.augment)
  smoothing, accum, ema_decay = cfg.optim.label_smoothing, cfg.optim.accum_steps, cfg.optim.ema_decay
  objective = objective or (
      lambda logits, targets, x: jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)))

  def loss_fn(params, batch_stats, x, targets, rng):
    logits, updates = model.apply(variables(params, batch_stats), x, train=True,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
    loss = objective(logits, targets, x)
    return loss + optim.penalty(cfg, params), (loss, logits, updates.get("batch_stats", batch_stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, drop_rng = jax.random.split(rng)
    num_classes = model.num_classes
    x, targets = augment.apply(ops, aug_rng, to_float(batch["image"]),
                               jax.nn.one_hot(batch["label"], num_classes))
    targets = targets * (1.0 - smoothing) + smoothing / num_classes
    x = standardize(x, mean, std)
    if accum == 1:
      (_, (loss, logits, batch_stats)), grads = grad_fn(state.params, state.batch_stats, x, targets, drop_rng)
      correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    else:
      # Micro-batch i takes every accum-th example, so each stays spread over all devices.
      split = lambda a: jnp.swapaxes(a.reshape((a.shape[0] // accum, accum) + a.shape[1:]), 0, 1)
      micro = (split(x), split(targets), split(batch["label"]))

      def body(carry, inputs):
        grads, batch_stats, loss, correct, i = carry
        mx, mt, ml = inputs
        (_, (l, logits, batch_stats)), g = grad_fn(state.params, batch_stats, mx, mt, jax.random.fold_in(drop_rng, i))
        grads = jax.tree.map(jnp.add, grads, g)
        return (grads, batch_stats, loss + l, correct + jnp.sum(jnp.argmax(logits, -1) == ml), i + 1), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, batch_stats, loss, correct, _), _ = jax.lax.scan(
          body, (zeros, state.batch_stats, 0.0, 0, 0), micro)
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss = loss / accum
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    ema = state.ema_params
    if ema_decay:
      ema = optim.ema_update(ema, params, optim.ema_decay_at(state.step, ema_decay))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema)
    metrics = {"loss": loss, "accuracy": correct / batch["label"].shape[0], "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics
  return train_step


def make_eval_step(model, mean, std):
  def eval_step(state, batch):
    logits = model.apply(variables(state), normalize(batch["image"], mean, std), train=False)
    mask = batch["mask"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss_sum": jnp.sum(jnp.where(mask, nll, 0.0)),
            "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == batch["label"])),
            "count": jnp.sum(mask)}
  return eval_step


def create_model(cfg, num_classes):
  return models.create(cfg.model.name, num_classes, dtype=jnp.dtype(cfg.model.dtype), **cfg.model.kwargs.to_dict())


def init_state(model, tx, seed, image_shape, ema=False):
  """The initial TrainState; pure in `seed`, so it can run under jit with output shardings."""
  rng = jax.random.PRNGKey(seed)
  init_rng, state_rng = jax.random.split(rng)
  variables_ = model.init({"params": init_rng, "dropout": init_rng}, jnp.zeros((1, *image_shape)), train=False)
  params = variables_["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables_.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng,
                    ema_params=jax.tree.map(jnp.copy, params) if ema else {})


def schedule_lengths(cfg, num_train):
  """(steps per epoch, total steps) for a config and training-set size."""
  per_epoch = pipeline.steps_per_epoch(num_train, cfg.batch_size)
  total = cfg.steps if cfg.steps > 0 else max(1, int(round(cfg.epochs * per_epoch)))
  return per_epoch, total


def build(cfg, info, mesh, fsdp=None):
  """Model, optimiser, and the state's abstract shapes with their target shardings.

  The one recipe shared by training and everything that restores a checkpoint. The state is
  sharded FSDP-style when `fsdp` (default: `cfg.parallel.fsdp`), else replicated.
  """
  model = create_model(cfg, len(info["class_names"]))
  per_epoch, total = schedule_lengths(cfg, info["num_train"])
  tx, lr = optim.make(cfg, total, per_epoch)
  init = functools.partial(init_state, model, tx, cfg.seed, tuple(info["image_shape"]), cfg.optim.ema_decay > 0)
  abstract = jax.eval_shape(init)
  fsdp = cfg.parallel.fsdp if fsdp is None else fsdp
  shardings = parallel.state_shardings(abstract, mesh, fsdp, cfg.parallel.fsdp_min_size)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return model, tx, lr, init, abstract, shardings


def data_info(cfg, ds):
  train_split = ds.split(cfg.data.train_split)
  mean, std = pipeline.normalization(cfg.data, train_split)
  return {"source": ds.name, "class_names": list(ds.class_names), "image_shape": list(ds.image_shape),
          "mean": mean, "std": std, "num_train": len(train_split), "pp_eval": ds.pp_eval}


def evaluate(eval_step, state, split, global_batch, sharding, prefetch=2):
  sums = None
  for batch in pipeline.eval_batches(split, global_batch, sharding, prefetch):
    out = eval_step(state, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = int(sums["count"])
  return {"accuracy": float(sums["correct"]) / n, "loss": float(sums["loss_sum"]) / n, "examples": n}


def _append_jsonl(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _read_jsonl(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def _trim_metrics(path, last_step):
  """On resume, drops records written after the checkpoint we resume from."""
  kept = [r for r in _read_jsonl(path) if r["step"] <= last_step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)


def plot_curves(metrics_path, out_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = _read_jsonl(metrics_path)
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] != "train"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label=evals[0]["split"] if evals else "eval")
  ax1.set(xlabel="step", ylabel="cross-entropy loss", title="Loss", yscale="log")
  ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train (batch)")
  ax2.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label=evals[0]["split"] if evals else "eval")
  ax2.set(xlabel="step", ylabel="accuracy", title="Accuracy")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def train(cfg, workdir):
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns the final eval metrics."""
  config_lib.validate(cfg)
  compile_cache.enable(cfg.compile_cache)  # a second run loads its executables instead of compiling them

  # ---------------------------------------------------------------- devices and mesh
  parallel.initialize(cfg.parallel)
  mesh = parallel.make_mesh()
  parallel.check_batch(cfg.batch_size)
  batch_sharding = parallel.batch_sharding(mesh)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # ---------------------------------------------------------------- data
  ds = sources.load(cfg.data)
  if cfg.data.val_fraction > 0:
    ds = sources.with_validation(ds, cfg.data.train_split, cfg.data.val_fraction)
  info = data_info(cfg, ds)
  train_split, test_split = ds.split(cfg.data.train_split), ds.split(cfg.data.eval_split)
  # Evaluations during training, and model selection, use val when there is one: never test.
  monitor = "val" if cfg.data.val_fraction > 0 else cfg.data.eval_split
  per_epoch, total_steps = schedule_lengths(cfg, len(train_split))
  if is_main:
    config_lib.save(cfg, os.path.join(workdir, "config.json"))
    with open(os.path.join(workdir, "dataset.json"), "w") as f:
      json.dump(info, f, indent=2)

  # ---------------------------------------------------------------- model and state
  model, tx, lr_fn, init, abstract, state_shardings = build(cfg, info, mesh)
  mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
  best_mngr = checkpoint.manager(workdir, 1, "best") if monitor == "val" else None
  state = checkpoint.restore_latest(mngr, abstract)
  if state is None:
    state = jax.jit(init, out_shardings=state_shardings)()  # initialised already in place
    if cfg.transfer.init_from:  # fine-tuning: matching parameters come from another run
      from imgrec import transfer
      state = transfer.init_from(state, cfg.transfer, state_shardings)
  start_step = int(state.step)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if is_main:
    _trim_metrics(metrics_path, start_step)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  print(f"imgrec: {cfg.model.name} ({n_params / 1e6:.3f}M params) on {ds.name} "
        f"{tuple(ds.image_shape)}, {len(train_split)} train / {len(ds.split(monitor))} {monitor}, "
        f"{jax.device_count()} device(s) x {jax.process_count()} process(es), "
        f"{total_steps} steps ({per_epoch}/epoch), " + (f"resuming at step {start_step}" if start_step else
                                                 f"from {cfg.transfer.init_from}" if cfg.transfer.init_from else "from scratch"),
        flush=True)

  # ---------------------------------------------------------------- compiled steps
  objective = None
  if cfg.distill.teacher:  # knowledge distillation: teacher logits inside the same jitted step
    from imgrec import compress
    objective = compress.distillation_loss(cfg.distill, info)
  train_step = jax.jit(make_train_step(model, tx, info["mean"], info["std"], cfg, objective),
                       in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                       donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(model, info["mean"], info["std"]),
                      in_shardings=(state_shardings, batch_sharding))
  eval_every = cfg.eval_every or per_epoch
  ckpt_every = cfg.checkpoint_every or per_epoch
  run_eval = lambda split: {**evaluate(eval_step, state, ds.split(split), cfg.batch_size, batch_sharding,
                                       cfg.data.prefetch), "split": split}

  # ---------------------------------------------------------------- model selection
  better = (lambda a, b: a > b) if cfg.select_metric == "accuracy" else (lambda a, b: a < b)
  best = {"value": None, "step": None, "since": 0}  # rebuilt from metrics.jsonl on resume
  for rec in _read_jsonl(metrics_path) if monitor == "val" else []:
    if rec["split"] == "val":
      if best["value"] is None or better(rec[cfg.select_metric], best["value"]):
        best.update(value=rec[cfg.select_metric], step=rec["step"], since=0)
      else:
        best["since"] += 1

  def stop_early():
    return cfg.early_stop_patience > 0 and best["since"] >= cfg.early_stop_patience

  # ---------------------------------------------------------------- loop
  pending = []  # per-step metrics still on device; fetched at log time, so the loop never waits on them

  def flush(step):
    if not pending:
      return
    fetched = jax.device_get(pending)
    for (s, m) in fetched:
      if not np.isfinite(m["loss"]):
        raise UserError(f"training diverged: loss is {m['loss']} at step {s}; lower optim.lr or set optim.grad_clip")
    rec = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
    elapsed = time.perf_counter() - flush.t0
    rec.update(step=step, split="train", lr=float(lr_fn(step - 1)),
               img_per_sec=len(fetched) * cfg.batch_size / max(elapsed, 1e-9))
    flush.t0 = time.perf_counter()
    pending.clear()
    if is_main:
      _append_jsonl(metrics_path, rec)
    bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_sec']:.0f}")

  result = None
  bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not is_main,
                  dynamic_ncols=True)
  flush.t0 = time.perf_counter()
  end_step = start_step if stop_early() else total_steps
  batches = pipeline.train_batches(train_split, cfg.batch_size, cfg.seed, start_step, end_step,
                                   batch_sharding, cfg.data.prefetch)
  try:
    for step, batch in batches:
      state, metrics = train_step(state, batch)
      pending.append((step, metrics))
      bar.update(1)
      done = step + 1
      if done % cfg.log_every == 0 or done == total_steps:
        flush(done)
      if done % eval_every == 0 or done == total_steps:
        flush(done)
        result = run_eval(monitor)
        if is_main:
          _append_jsonl(metrics_path, {"step": done, **result})
          plot_curves(metrics_path, os.path.join(workdir, "curves.png"))
        note = ""
        if best_mngr is not None:
          if best["value"] is None or better(result[cfg.select_metric], best["value"]):
            best.update(value=result[cfg.select_metric], step=done, since=0)
            checkpoint.save(best_mngr, done, state)
            note = " (best so far)"
          else:
            best["since"] += 1
        bar.write(f"step {done}: {monitor} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}{note}")
        flush.t0 = time.perf_counter()
      stopping = stop_early()
      if done % ckpt_every == 0 or done == total_steps or stopping:
        flush(done)
        checkpoint.save(mngr, done, state)
      if stopping:
        bar.write(f"early stop at step {done}: no better val {cfg.select_metric} for {best['since']} evaluations")
        batches.close()
        break
  finally:
    bar.close()
  mngr.wait_until_finished()
  mngr.close()

  # ---------------------------------------------------------------- final evaluation
  if best_mngr is not None:  # the selected model, on the test split
    best_mngr.wait_until_finished()
    state = checkpoint.restore_latest(best_mngr, abstract) or state
    best_mngr.close()
    print(f"best val {cfg.select_metric}: {best['value']:.4f} at step {best['step']}", flush=True)
    result = run_eval(cfg.data.eval_split)
  elif result is None:  # resumed an already finished run
    result = run_eval(cfg.data.eval_split)
  print(f"{cfg.data.eval_split} accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}, "
        f"{result['examples']} examples)", flush=True)
  return state, result


def restore(workdir, mesh=None):
  """Loads a trained workdir: (config, data info, model, state) on this process's devices.

  The checkpoint may have been written on any number of devices; it is restored replicated
  on `mesh` (default: all devices here).
  """
  cfg = config_lib.load_saved(os.path.join(workdir, "config.json"))
  info_path = os.path.join(workdir, "dataset.json")
  if not os.path.isfile(info_path):
    raise UserError(f"{info_path} not found: is {workdir} a workdir written by `imgrec train`?")
  with open(info_path) as f:
    info = json.load(f)
  mesh = mesh or parallel.make_mesh()
  model, _, _, _, abstract, _ = build(cfg, info, mesh, fsdp=False)  # replicated, whatever wrote it
  # The selected model when the run kept one, else the latest.
  state = None
  for sub in ("best", "checkpoints"):
    if os.path.isdir(os.path.join(workdir, sub)):
      mngr = checkpoint.manager(workdir, cfg.keep_checkpoints, sub)
      state = checkpoint.restore_latest(mngr, abstract)
      mngr.close()
      if state is not None:
        break
  if state is None:
    raise UserError(f"no readable checkpoint in {os.path.join(workdir, 'checkpoints')}; train first with "
                    f"`imgrec train --workdir {workdir}`")
  return cfg, info, model, state
