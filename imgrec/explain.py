"""Why did the model say that: attribution maps for single images.

  gradient saliency, SmoothGrad, integrated gradients  (any model; in pixel space [0, 1])
  Grad-CAM                                             (convolutional models; a layer chosen by name)
  attention rollout                                    (transformers: attention weights sown into
                                                        the `intermediates` collection)

Models are never rewritten: a layer's activations are reached with `nn.intercept_methods`,
which wraps every submodule call. Grad-CAM adds a zero `delta` to the chosen layer's output
and differentiates the logit with respect to it (that gradient equals the gradient with
respect to the activation). Flax's `MultiHeadDotProductAttention` is asked to sow its weights
(`sow_weights=True`) the same way.

  explain_workdir(W) -> W/explain/{NN_CLASS.png (one per image), filters.png, explain.json}
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgrec import plots, steps, tasks, workdir as wd
from imgrec.plots import show_image, subplots
from imgrec.data import preprocess
from imgrec.errors import UserError


def _path(context):
  return "/".join(context.module.path)


def module_outputs(model, variables, x):
  """[(layer name, output shape)] of every submodule call, in the order the calls finish."""
  records = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path and hasattr(out, "shape"):
      records.append((_path(context), tuple(out.shape)))
    return out
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return records


def default_cam_layer(model, variables, x):
  """The last layer whose output is still a spatial map (NHWC with H, W > 1): the usual Grad-CAM choice."""
  spatial = [name for name, shape in module_outputs(model, variables, x)
             if len(shape) == 4 and shape[1] > 1 and shape[2] > 1]
  if not spatial:
    raise UserError("the model has no layer with a spatial (NHWC) output; Grad-CAM needs a convolutional model")
  return spatial[-1]


def check_layer(model, variables, x, layer):
  outputs = dict(module_outputs(model, variables, x))
  if layer not in outputs:
    maps = [n for n, s in outputs.items() if len(s) == 4]
    raise UserError(f"no layer named {layer!r} in the model; layers with spatial outputs: {', '.join(maps)}")
  if len(outputs[layer]) != 4:
    raise UserError(f"layer {layer!r} has output shape {outputs[layer]}; Grad-CAM needs an NHWC map")
  return outputs[layer]


# ---------------------------------------------------------------------------- attribution methods
# Each takes `f`: float image [H, W, C] in [0, 1] -> logits [num_classes], and returns a map.


def saliency(f, x, target):
  """Vanilla gradient: d logit[target] / d pixel."""
  return jax.grad(lambda x: f(x)[target])(x)


def smoothgrad(f, x, target, key, n=32, sigma=0.15):
  """Mean gradient over `n` copies of x with Gaussian noise of std `sigma` (pixel range 1)."""
  noisy = x + sigma * jax.random.normal(key, (n, *x.shape))
  return jnp.mean(jax.vmap(lambda xi: saliency(f, xi, target))(noisy), axis=0)


def integrated_gradients(f, x, target, baseline=None, steps=64):
  """(x - baseline) times the path-averaged gradient along the straight line (trapezoid rule).

  Completeness: the attributions sum to f(x)[target] - f(baseline)[target], up to the
  quadrature error, which shrinks with `steps`.
  """
  baseline = jnp.zeros_like(x) if baseline is None else baseline
  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  grads = jax.lax.map(lambda a: saliency(f, baseline + a * (x - baseline), target), alphas)
  weights = jnp.full(steps + 1, 1.0 / steps).at[jnp.array([0, -1])].set(0.5 / steps)
  return (x - baseline) * jnp.tensordot(weights, grads, axes=1)


def grad_cam(model, variables, x_norm, target, layer, layer_shape):
  """Grad-CAM map [h, w] of `layer` for one normalised image x_norm [H, W, C]: relu(sum_k w_k A_k),
  with w_k the spatial mean of d logit / d A_k."""
  def logit(delta):
    acts = []

    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and _path(context) == layer:
        acts.append(out)
        out = out + delta.astype(out.dtype)
      return out
    with nn.intercept_methods(perturb):
      logits = model.apply(variables, x_norm[None], train=False)
    return logits[0, target], acts[0]
  grads, act = jax.grad(logit, has_aux=True)(jnp.zeros((1, *layer_shape[1:]), jnp.float32))
  weights = grads[0].mean(axis=(0, 1))
  return jax.nn.relu(jnp.einsum("hwk,k->hw", act[0].astype(jnp.float32), weights))


def attention_weights(model, variables, x):
  """Attention maps [B, heads, T, T] of every attention layer, in call order.

  Collects every `attention_weights` entry the model sows into `intermediates` (Flax's
  convention); Flax `MultiHeadDotProductAttention` layers are asked to sow theirs.
  """
  def ask(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.MultiHeadDotProductAttention) and context.method_name == "__call__":
      kwargs = dict(kwargs, sow_weights=True)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(ask):
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  found = []

  def walk(node):  # dicts keep insertion (= call) order while traced
    for key, value in node.items():
      if key == "attention_weights":
        found.extend(value if isinstance(value, tuple) else (value,))
      elif isinstance(value, dict) or hasattr(value, "items"):
        walk(value)
  walk(state.get("intermediates", {}))
  return found


def attention_rollout(weights, residual=0.5):
  """Rollout (Abnar & Zuidema 2020): heads averaged, identity mixed in for the residual path,
  rows renormalised, then multiplied through the layers. [B, T, T]: how much each output token
  draws on each input token."""
  if not weights:
    raise UserError("the model sows no attention weights; attention rollout needs a transformer")
  rollout = None
  for w in weights:
    a = w.astype(jnp.float32).mean(axis=1)
    a = residual * jnp.eye(a.shape[-1]) + (1 - residual) * a
    a = a / a.sum(axis=-1, keepdims=True)
    rollout = a if rollout is None else a @ rollout
  return rollout


def rollout_map(rollout):
  """[B, T, T] rollout -> [B, g, g] map over the patch grid: the class token's row when there is one
  (T = g*g + 1), else the mean over all tokens (T = g*g)."""
  t = rollout.shape[-1]
  g = int(round(np.sqrt(t - 1)))
  if g * g == t - 1:
    patch = rollout[:, 0, 1:]
  else:
    g = int(round(np.sqrt(t)))
    if g * g != t:
      raise UserError(f"cannot lay {t} tokens out on a square patch grid")
    patch = rollout.mean(axis=1)
  return patch.reshape(-1, g, g)


def rollout_image(model, variables, x_norm):
  """Attention rollout of one normalised image [H, W, C], resized to [H, W]."""
  patch = rollout_map(attention_rollout(attention_weights(model, variables, x_norm[None])))[0]
  return _resize(patch, x_norm.shape[:2])


def _resize(m, hw):
  return jax.image.resize(m, hw, method="bilinear")


def make_explainer(model, variables, mean, std, method="gradcam", layer=None, layer_shape=None, ig_steps=64,
                   smooth_n=32):
  """jit((uint8 images [N,H,W,C], targets [N]) -> dict of [N, H, W] maps and logits)."""
  f = lambda x: model.apply(variables, steps.standardize(x, mean, std)[None], train=False)[0]

  def one(x01, target, key):
    hw = x01.shape[:2]
    out = {"logits": f(x01),
           "saliency": jnp.abs(saliency(f, x01, target)).max(-1),
           "smoothgrad": jnp.abs(smoothgrad(f, x01, target, key, smooth_n)).max(-1),
           "integrated_gradients": integrated_gradients(f, x01, target, steps=ig_steps).sum(-1)}
    if method == "gradcam":
      out["gradcam"] = _resize(grad_cam(model, variables, steps.standardize(x01, mean, std), target, layer,
                                        layer_shape), hw)
    else:
      out["rollout"] = rollout_image(model, variables, steps.standardize(x01, mean, std))
    return out

  @jax.jit
  def explain(images, targets):
    x01 = steps.to_float(images)
    keys = jax.random.split(jax.random.PRNGKey(0), len(images))
    return jax.lax.map(lambda a: one(*a), (x01, targets, keys))
  return explain


# ---------------------------------------------------------------------------- workdir driver


def load_images(paths, image_shape, pp_eval=""):
  """Image files -> uint8 [N, H, W, C] at the model's size and channel count, through the run's eval
  preprocessing (`pp_eval` from dataset.json; a plain resize without one)."""
  out = []
  for p in paths:
    try:
      with open(p, "rb") as f:
        out.append(preprocess.for_model(f.read(), pp_eval, image_shape))
    except (OSError, preprocess.BadImage) as e:
      raise UserError(f"cannot read image {p!r}: {e}; pass PNG or JPEG files") from None
  return np.stack(out)


def explain_workdir(workdir, images=None, split="test", n=16, layer=None, ig_steps=128, smooth_n=32, seed=0,
                    overrides=()):
  """Explains `n` examples of `split` (a fixed random sample), or the files `images`. Writes W/explain/."""
  run = wd.restore(workdir, params_only=True, overrides=overrides)
  tasks.require_classification(run.cfg, "explain", workdir)  # the maps explain a class score
  info, model = run.info, run.model
  variables = jax.device_get(run.variables)
  class_names = info["class_names"]
  if images:
    x = load_images(images, info["image_shape"], info.get("pp_eval", ""))
    labels, names = None, [os.path.splitext(os.path.basename(p))[0] for p in images]
  else:
    data = wd.dataset(run).split(split)
    if n <= 0:
      raise UserError(f"--n must be positive, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(data), min(n, len(data)), replace=False))
    x, labels = data.get(idx)
    names = [f"{split}{i}" for i in idx]
  probe = jnp.zeros((1, *info["image_shape"]), jnp.float32)
  method = "rollout" if attention_weights_shape(model, variables, probe) else "gradcam"
  layer_shape = None
  if method == "gradcam":
    layer = layer or default_cam_layer(model, variables, probe)
    layer_shape = check_layer(model, variables, probe, layer)
  explain = make_explainer(model, variables, info["mean"], info["std"], method, layer, layer_shape, ig_steps,
                           smooth_n)
  logits = np.asarray(jax.jit(lambda v, x: steps.apply(model, v, x, info["mean"], info["std"]))(variables, x))
  targets = logits.argmax(-1)
  maps = jax.device_get(explain(jnp.asarray(x), jnp.asarray(targets)))
  out = os.path.join(workdir, "explain")
  os.makedirs(out, exist_ok=True)
  files = []
  for i in range(len(x)):
    path = os.path.join(out, f"{i:02d}_{names[i]}.png")
    plot_explanation(x[i], {k: v[i] for k, v in maps.items()}, class_names,
                                   None if labels is None else int(labels[i]), method, layer, path)
    files.append(path)
  filters = first_conv_kernel(model, variables, probe)
  if filters is not None:
    plots.plot_filters(filters[1], filters[0], os.path.join(out, "filters.png"))
  summary = {"method": method, "layer": layer, "files": files,
             "filters": os.path.join(out, "filters.png") if filters is not None else None,
             "predictions": [class_names[t] for t in targets.tolist()],
             "labels": None if labels is None else [class_names[t] for t in labels.tolist()]}
  with open(os.path.join(out, "explain.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def attention_weights_shape(model, variables, x):
  return jax.eval_shape(lambda v, x: attention_weights(model, v, x), variables, x)


def first_conv_kernel(model, variables, x):
  """(layer name, kernel [kh, kw, in, out]) of the first convolution the model calls, or None."""
  for name, _ in module_outputs(model, variables, x):
    node = variables["params"]
    for part in name.split("/"):
      node = node.get(part, {}) if hasattr(node, "get") else {}
    kernel = node.get("kernel") if hasattr(node, "get") else None
    if kernel is not None and np.ndim(kernel) == 4:
      return name, np.asarray(kernel)
  return None


_TITLES = {"saliency": "gradient saliency |dy/dx|", "smoothgrad": "SmoothGrad |mean dy/dx|",
           "integrated_gradients": "integrated gradients", "gradcam": "Grad-CAM", "rollout": "attention rollout"}


def plot_explanation(image, maps, class_names, label, method, layer, path, top=5):
  """One row: the image, its top classes, then each attribution map over a gray copy of the image."""
  probs = np.exp(maps["logits"] - maps["logits"].max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:top]
  keys = ["saliency", "smoothgrad", "integrated_gradients", method]
  fig, axes = subplots(1, 2 + len(keys), figsize=(3.1 * (2 + len(keys)), 3.6),
                           gridspec_kw={"width_ratios": [1, 1.3] + [1] * len(keys)})
  show_image(axes[0], image)
  axes[0].set_title(("true: " + class_names[label] + "\n" if label is not None else "") +
                    f"pred: {class_names[order[0]]}", fontsize=9)
  ax = axes[1]
  ax.barh(range(len(order)), probs[order], color=["tab:green" if c == label else "tab:blue" for c in order])
  for j, c in enumerate(order):
    ax.text(min(probs[c] + 0.02, 0.75), j, f"{probs[c]:.3f}", va="center", fontsize=7)
  ax.set_yticks(range(len(order)), [class_names[c] for c in order], fontsize=8)
  ax.invert_yaxis()
  ax.set(xlim=(0, 1), xlabel="probability", title=f"top {len(order)} classes")
  ax.tick_params(axis="x", labelsize=7)
  gray = image.astype(np.float32).mean(-1)
  for ax, key in zip(axes[2:], keys):
    m = np.asarray(maps[key], np.float32)
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    if key == "integrated_gradients":  # signed: red adds to the class score, blue takes away
      lim = max(float(np.abs(m).max()), 1e-12)
      im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7)
    else:
      im = ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet" if key in ("gradcam", "rollout") else "inferno",
                     vmin=0, vmax=1, alpha=0.55)
    title = _TITLES[key] + (f"\nlayer {layer}" if key == "gradcam" and layer else "")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("attribution" if key == "integrated_gradients" else "relative importance", fontsize=7)
  fig.suptitle(f"Explanations for class '{class_names[order[0]]}' ({probs[order[0]]:.2f})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
