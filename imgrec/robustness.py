"""Accuracy under image corruptions and adversarial attacks.

  robustness_workdir(W) -> W/robustness/{robustness.json, robustness.md, robustness.png}

Corruptions are host-side numpy functions of uint8 NHWC batches at severities 0..5, where 0
is the identity. The random parts of a corruption (noise draws, occluder position) depend on
the batch, not on the severity, so a higher severity moves each image further from the
original. FGSM and PGD attack the cross-entropy of the true label in pixel space [0, 1] under
an L-infinity budget `eps` (given in 1/255 units).
"""
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from imgrec import parallel, steps, tasks, workdir as wd
from imgrec.plots import subplots
from imgrec.data import splits
from imgrec.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
# Per-corruption parameter at severities 0..5 (index 0 = identity).
LEVELS = {
    "gaussian_noise": (0, 0.04, 0.08, 0.12, 0.18, 0.26),   # noise std, fraction of the pixel range
    "salt_pepper": (0, 0.01, 0.03, 0.06, 0.10, 0.16),      # fraction of pixels set to 0 or 255
    "gaussian_blur": (0, 0.5, 0.8, 1.2, 1.7, 2.4),         # blur std in pixels at 32 px (scaled with size)
    "contrast": (1, 0.7, 0.5, 0.35, 0.22, 0.12),           # factor on the distance to the image mean
    "brightness": (0, 0.1, 0.2, 0.3, 0.4, 0.5),            # added fraction of the pixel range
    "rotation": (0, 8, 16, 25, 35, 50),                    # degrees, counter-clockwise
    "occlusion": (0, 0.15, 0.25, 0.35, 0.45, 0.55),        # side of a gray square, fraction of the image side
    "jpeg": (100, 80, 50, 30, 15, 7),                      # JPEG quality (severity 0 skips the codec)
}
CORRUPTIONS = tuple(LEVELS)
EPSILONS = (1, 2, 4, 8)  # adversarial budgets in 1/255 units


def _gaussian_noise(x, v, rng):
  return x + v * 255 * rng.standard_normal(x.shape)


def _salt_pepper(x, v, rng):
  u, salt = rng.random(x.shape[:3] + (1,)), rng.random(x.shape[:3] + (1,)) < 0.5
  return np.where(u < v, np.where(salt, 255.0, 0.0), x)


def _gaussian_blur(x, v, rng):
  from scipy import ndimage
  s = v * x.shape[1] / 32
  return ndimage.gaussian_filter(x, sigma=(0, s, s, 0), mode="nearest")


def _contrast(x, v, rng):
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * v + mean


def _brightness(x, v, rng):
  return x + v * 255


def _rotation(x, v, rng):
  from scipy import ndimage
  return ndimage.rotate(x, v, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)


def _occlusion(x, v, rng):
  n, h, w, _ = x.shape
  cy, cx = rng.random(n) * h, rng.random(n) * w  # centre drawn independently of the severity
  half = v * min(h, w) / 2
  ys, xs = np.arange(h)[None, :, None] + 0.5, np.arange(w)[None, None, :] + 0.5
  inside = (np.abs(ys - cy[:, None, None]) < half) & (np.abs(xs - cx[:, None, None]) < half)
  return np.where(inside[..., None], 128.0, x)


def _jpeg(x, v, rng):
  from PIL import Image
  out = np.empty_like(x)
  for i, img in enumerate(np.clip(x, 0, 255).astype(np.uint8)):
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=int(v))
    dec = np.asarray(Image.open(buf))
    out[i] = dec[..., None] if dec.ndim == 2 else dec
  return out


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "salt_pepper": _salt_pepper, "gaussian_blur": _gaussian_blur,
              "contrast": _contrast, "brightness": _brightness, "rotation": _rotation, "occlusion": _occlusion,
              "jpeg": _jpeg}


def corrupt(images, name, severity, seed=0):
  """Corrupted copy of uint8 NHWC `images` at `severity` (0 = unchanged, 5 = strongest)."""
  if name not in LEVELS:
    raise UserError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
  if not 0 <= severity < len(LEVELS[name]):
    raise UserError(f"corruption severity must be 0..{len(LEVELS[name]) - 1}, got {severity}")
  if severity == 0:
    return images
  rng = np.random.default_rng(seed)
  out = _FUNCTIONS[name](images.astype(np.float64), LEVELS[name][severity], rng)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- adversarial


def make_attack(model, mean, std, n_steps=0):
  """`fn((variables, eps), batch) -> correct` per example, on adversarial versions of the batch's images.

  `eps` is the L-infinity budget in [0, 1] pixel units, an argument of the compiled function (a float32
  scalar), so every budget runs the one program compiled per attack. n_steps=0: FGSM, one step of size eps
  along the sign of the input gradient. n_steps>0: PGD, a random start in the eps-ball then `n_steps` signed
  steps of 2.5 eps / n_steps, projected back.
  """
  def fn(inputs, batch):
    variables, eps = inputs
    images, labels = batch["image"], batch["label"]
    logits_fn = lambda x: model.apply(variables, steps.standardize(x, mean, std), train=False)
    loss_grad = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), labels).sum())
    x0 = steps.to_float(images)
    if n_steps == 0:
      x = jnp.clip(x0 + eps * jnp.sign(loss_grad(x0)), 0, 1)
    else:
      key = jax.random.fold_in(jax.random.PRNGKey(0), jnp.sum(labels))
      x = jnp.clip(x0 + jax.random.uniform(key, x0.shape, minval=-eps, maxval=eps), 0, 1)
      step = 2.5 * eps / n_steps

      def body(_, x):
        x = x + step * jnp.sign(loss_grad(x))
        return jnp.clip(jnp.clip(x, x0 - eps, x0 + eps), 0, 1)
      x = jax.lax.fori_loop(0, n_steps, body, x)
    return jnp.argmax(logits_fn(jax.lax.stop_gradient(x)), -1) == labels
  return fn


def budget(eps_255):
  """An attack's `eps` argument for a budget in 1/255 units."""
  return np.float32(eps_255 / 255.0)


def _accuracy(fn, variables, data, batch_size, mesh, prefetch, transform=None, desc=""):
  return float(np.mean(steps.stream(fn, variables, data, batch_size, mesh, prefetch, transform, desc)))


def robustness_workdir(workdir, split=None, batch_size=None, limit=0, corruptions=CORRUPTIONS, epsilons=EPSILONS,
                       pgd_steps=10, seed=0, overrides=()):
  """Clean, corrupted and adversarial accuracy of the workdir's latest checkpoint; writes W/robustness/.

  `limit` > 0 evaluates a fixed random subset of that many examples (the same for every corruption).
  """
  run = wd.restore(workdir, params_only=True, overrides=overrides)
  tasks.require_classification(run.cfg, "robustness", workdir)  # accuracy under corruptions and attacks
  cfg, info, model, variables = run.cfg, run.info, run.model, run.variables
  split = split or cfg.data.eval_split
  mesh = parallel.make_mesh()
  batch_size = batch_size or cfg.batch_size
  parallel.check_batch(batch_size)
  data = wd.dataset(run).split(split)
  if 0 < limit < len(data):
    data = splits.subset(data, np.sort(np.random.default_rng(seed).choice(len(data), limit, replace=False)))
  for name in corruptions:
    corrupt(np.zeros((1, 2, 2, 1), np.uint8), name, 0)  # validates the names before any work
  mean, std, prefetch = info["mean"], info["std"], cfg.data.prefetch
  clean_fn = lambda v, b: jnp.argmax(steps.apply(model, v, b["image"], mean, std), -1) == b["label"]
  clean = _accuracy(clean_fn, variables, data, batch_size, mesh, prefetch, desc="clean")
  table = {}
  bar = tqdm.tqdm(total=len(corruptions) * len(SEVERITIES), desc="corruptions", unit="run",
                  disable=jax.process_index() != 0)
  for ci, name in enumerate(corruptions):
    table[name] = []
    for s in SEVERITIES:
      fn = lambda images, b, name=name, s=s: corrupt(images, name, s, seed=[seed, ci, b, jax.process_index()])
      table[name].append(_accuracy(clean_fn, variables, data, batch_size, mesh, prefetch, fn, desc=f"{name} {s}"))
      bar.update(1)
      bar.set_postfix(last=f"{name}@{s}={table[name][-1]:.3f}")
  bar.close()
  adversarial = {}
  for attack, n_steps in (("fgsm", 0), ("pgd", pgd_steps)):
    fn = make_attack(model, mean, std, n_steps)  # one compiled program per attack, whatever the budgets
    adversarial[attack] = [_accuracy(fn, (variables, budget(eps)), data, batch_size, mesh, prefetch,
                                     desc=f"{attack} eps={eps}/255") for eps in epsilons]
  mean_corr = float(np.mean([np.mean(v) for v in table.values()])) if table else float("nan")
  result = {"split": split, "step": int(run.state.step), "examples": len(data), "clean_accuracy": clean,
            "severities": list(SEVERITIES), "levels": {k: list(LEVELS[k]) for k in corruptions},
            "corruptions": table, "mean_corruption_accuracy": mean_corr,
            "relative_drop": (clean - mean_corr) / clean if clean > 0 else float("nan"),
            "epsilons_255": list(epsilons), "pgd_steps": pgd_steps, "adversarial": adversarial}
  if jax.process_index() == 0:
    out = os.path.join(workdir, "robustness")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "robustness.json"), "w") as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(out, "robustness.md"), "w") as f:
      f.write(table_markdown(result))
    plot_robustness(result, os.path.join(out, "robustness.png"))
    result["out"] = out
  return result


def table_markdown(r):
  sev = r["severities"]
  lines = [f"Split `{r['split']}`, {r['examples']} examples, checkpoint step {r['step']}. "
           f"Clean accuracy **{r['clean_accuracy']:.4f}**; mean corruption accuracy **{r['mean_corruption_accuracy']:.4f}** "
           f"(relative drop {100 * r['relative_drop']:.1f}%).", "",
           "| corruption | " + " | ".join(f"sev {s}" for s in sev) + " | mean | relative drop |",
           "|---|" + "---|" * (len(sev) + 2)]
  lines.append("| clean | " + " | ".join(f"{r['clean_accuracy']:.4f}" for _ in sev) + f" | {r['clean_accuracy']:.4f} | 0.0% |")
  for name, accs in r["corruptions"].items():
    m = float(np.mean(accs))
    lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) +
                 f" | {m:.4f} | {100 * (r['clean_accuracy'] - m) / max(r['clean_accuracy'], 1e-12):.1f}% |")
  lines += ["", "| attack | " + " | ".join(f"eps {e}/255" for e in r["epsilons_255"]) + " |",
            "|---|" + "---|" * len(r["epsilons_255"])]
  for attack, accs in r["adversarial"].items():
    label = f"PGD-{r['pgd_steps']}" if attack == "pgd" else "FGSM"
    lines.append(f"| {label} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
  return "\n".join(lines) + "\n"


def headline(result):
  """The short JSON `imgrec robustness --json` prints."""
  return {k: result[k] for k in ("split", "examples", "clean_accuracy", "mean_corruption_accuracy", "relative_drop",
                                 "adversarial")}


def plot_robustness(r, path):
  fig, (ax1, ax2) = subplots(1, 2, figsize=(12, 4.8))
  sev = [0] + r["severities"]
  for name, accs in r["corruptions"].items():
    ax1.plot(sev, [r["clean_accuracy"]] + accs, "o-", label=name)
  ax1.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1.02), xticks=sev,
          title=f"Corruptions (clean {r['clean_accuracy']:.3f}, mean {r['mean_corruption_accuracy']:.3f})")
  ax1.legend(fontsize=8, ncol=2, loc="lower left")
  eps = [0] + r["epsilons_255"]
  for attack, accs in r["adversarial"].items():
    ax2.plot(eps, [r["clean_accuracy"]] + accs, "o-", label=f"PGD-{r['pgd_steps']}" if attack == "pgd" else "FGSM")
  ax2.set(xlabel="L-inf budget eps (x 1/255)", ylabel="accuracy", ylim=(0, 1.02), xticks=eps,
          title="Adversarial accuracy")
  ax2.legend()
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  fig.suptitle(f"Robustness on {r['split']} ({r['examples']} examples, step {r['step']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
