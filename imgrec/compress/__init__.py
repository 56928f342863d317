"""Compression of a trained run: int8 and bf16 weights (quantize.py), magnitude pruning (prune.py),
structured channel pruning (channels.py).

`compress_workdir(W, method, out)` runs one method and measures the result against W on its test split.
The two pruning methods fine-tune through the ordinary trainer, which the caller hands in as
`finetune(cfg, workdir)` (the CLI passes `imgrec.train.train`): commands on a trained run sit below
the trainer and never import it.
"""
import os
import tempfile

import jax
import jax.numpy as jnp

from imgrec import parallel, steps, tasks, workdir as wd
from imgrec.compress import channels, prune, quantize
from imgrec.errors import UserError

METHODS = ("int8", "bf16", "prune", "channels")


def correct_fn(model, mean, std):
  """`fn(variables, batch) -> correct` per example for `steps.stream`; `model` is any object with a Linen-style
  `.apply` (e.g. `quantize.Int8Model`). Build it once per model: `steps.stream` compiles once per function."""
  return lambda v, b: jnp.argmax(steps.apply(model, v, b["image"], mean, std), -1) == b["label"]


def accuracy(fn, variables, split, batch_size=256):
  """Top-1 accuracy of a `correct_fn` on a split."""
  return float(steps.stream(fn, variables, split, batch_size, parallel.make_mesh(), desc="accuracy").mean())


def _npz_bytes(variables):
  with tempfile.TemporaryDirectory() as tmp:
    wd.save_params(os.path.join(tmp, "v.npz"), variables)
    return os.path.getsize(os.path.join(tmp, "v.npz"))


def compress_workdir(source, method, out, sparsity=0.9, steps=200, finetune=None):
  """One compression method on a workdir; returns {method, accuracy, accuracy_fp32, bytes, bytes_fp32, ...}.

  int8 / bf16 write a variables .npz to `out`; prune (magnitude) and channels (structured) write a new
  workdir to `out`, fine-tuned `steps` steps by `finetune(cfg, workdir)`, with its variables also as
  out/params.npz.
  """
  if method not in METHODS:
    raise UserError(f"unknown compression method {method!r}; use {', '.join(METHODS)}")
  if method in ("prune", "channels") and steps > 0 and finetune is None:
    raise ValueError(f"compress_workdir(method={method!r}) fine-tunes: pass finetune=imgrec.train.train")
  if method in ("prune", "channels"):  # before anything is read or written: no run is ever overwritten
    wd.refuse_existing_run(out, f"compress --method {method}")
  elif os.path.exists(out):
    raise UserError(f"{out} exists; compress --method {method} writes a new .npz and never overwrites a file: give "
                    "another --out (nothing was written)")
  run = wd.restore(source, params_only=True)
  tasks.require_classification(run.cfg, "compress", source)  # every method is measured by top-1 accuracy
  variables = jax.device_get(run.variables)
  test = wd.dataset(run).split(run.cfg.data.eval_split)
  fn = lambda model: correct_fn(model, run.info["mean"], run.info["std"])
  fp32 = fn(run.model)  # measures the reference and the bf16 weights: one compilation
  result = {"method": method, "accuracy_fp32": accuracy(fp32, variables, test), "bytes_fp32": _npz_bytes(variables)}
  if method == "int8":
    q = quantize.quantize_workdir(source, out)
    result["accuracy"] = accuracy(fn(quantize.Int8Model(run.model)), q, test)
  elif method == "bf16":
    wd.save_params(out, quantize.cast_bf16(variables))
    restored = jax.device_get(quantize.to_float32(wd.unflatten(wd.load_params(out))))  # host arrays, as `variables`
    result["accuracy"] = accuracy(fp32, restored, test)
  else:
    if method == "prune":
      cfg = prune.prepare(source, out, sparsity, steps)
    else:
      cfg, r = channels.prepare(source, out, sparsity, steps)
      result.update(params=r["params_after"], params_fp32=r["params_before"], widths=r["kwargs"])
    if steps > 0:
      finetune(cfg, out)
    small = wd.restore(out, params_only=True)
    small_vars = jax.device_get(small.variables)
    result["accuracy"] = accuracy(fn(small.model), small_vars, test)
    if method == "prune":
      result["sparsity"] = prune.sparsity_of(small_vars["params"])
    out = os.path.join(out, wd.PARAMS_FILE)
    # Pruned zeros deflate; channel pruning is stored uncompressed, like the fp32 reference, so its saving is real.
    wd.save_params(out, small_vars, compressed=method == "prune")
  result["bytes"] = os.path.getsize(out)
  return result


def line(r):
  """`imgrec compress`'s line: the method's accuracy and size against float32."""
  extra = f", sparsity {r['sparsity']:.3f}" if "sparsity" in r else ""
  extra += f", params {r['params_fp32']} -> {r['params']}" if "params" in r else ""
  return (f"{r['method']}: accuracy {r['accuracy']:.4f} (fp32 {r['accuracy_fp32']:.4f}), "
          f"{r['bytes']} bytes (fp32 {r['bytes_fp32']}){extra}")
