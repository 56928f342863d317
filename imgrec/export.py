"""Serialises a trained model's predict function with `jax.export` (StableHLO).

The artifact is a zip file:
  predict.jaxexport   `Exported.serialize()` of the run's task's predict: `predict(uint8[b, H, W, C]) -> {output
                      name: array}` (classification: logits and probabilities [b, K]; detection: detection_boxes
                      [b, K, 4], detection_scores, detection_classes [b, K], num_detections [b], decoding and NMS
                      included), batch dimension `b` symbolic, normalisation and weights baked in as constants
  meta.json           task, class names, image shape, eval preprocessing (what a server applies to an encoded
                      image), input dtype, outputs (the task's one description of what it serves: name,
                      datatype and shape of each array, "b" the batch), platforms, source workdir; "encoders"
                      and "assets" for a task with more than predict (below)
  NAME.jaxexport      each of the task's encoders (make_encoders: a two-tower model's "text", token ids int32[b,
                      L] -> text embeddings), batch symbolic, weights baked in
  assets/NAME         the task's serve_assets files (a tokenizer's), their meta in meta.json "assets"
A task that scores with its encoders (open-vocabulary labels) serves outputs the predict module does not return
itself (logits against request labels): the server computes them with the encoders, as for a workdir.

Loading needs only jax (no imgrec model code): `load(path)` here, or by hand:
  exp = jax.export.deserialize(zipfile.ZipFile(path).read("predict.jaxexport")); exp.call(images)
"""
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import tasks, workdir as wd
from imgrec.tasks import contract
from imgrec.errors import UserError

MODULE_NAME = "predict.jaxexport"
FORMAT = "imgrec-jax-export-v2"  # v2: predict returns {output name: array}, meta.json describes each output
META_NAME = "meta.json"
ASSETS = "assets"
# Lowered for every platform it may be served on; the caller's platform is picked at run time.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def make_predict(model, variables, mean, std, task):
  """`predict(uint8 NHWC images) -> {output name: array}` (the task's OUTPUTS): the task's predict with
  `variables` closed over (baked in)."""
  predict = task.make_predict(model, mean, std)
  return lambda images: predict(variables, images)


def export_predict(predict, image_shape, platforms=DEFAULT_PLATFORMS):
  """`jax.export.Exported` of `predict` over uint8[b, *image_shape] with a symbolic batch `b`."""
  (b,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((b, *image_shape), jnp.uint8)
  return jax.export.export(jax.jit(predict), platforms=tuple(platforms))(spec)


def export_encoder(encoder, variables, platforms=DEFAULT_PLATFORMS):
  """`jax.export.Exported` of a task's contract.Encoder with `variables` baked in, batch `b` symbolic."""
  (b,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((b, *encoder.shape), jnp.dtype(encoder.dtype))
  return jax.export.export(jax.jit(lambda x: encoder.fn(variables, x)), platforms=tuple(platforms))(spec)


def write(path, exported, meta, encoders=None, files=None):
  """Writes the zip artifact (module, encoder modules, asset files + meta.json) atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  try:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
      z.writestr(MODULE_NAME, bytes(exported.serialize()))
      for name, e in (encoders or {}).items():
        z.writestr(f"{name}.jaxexport", bytes(e.serialize()))
      for name, blob in (files or {}).items():
        z.writestr(f"{ASSETS}/{name}", blob)
      z.writestr(META_NAME, json.dumps(meta, indent=2))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def export_workdir(workdir, out, platforms=DEFAULT_PLATFORMS):
  """Exports the latest checkpoint of `workdir` to the artifact `out`; returns its meta dict."""
  run = wd.restore(workdir, params_only=True)
  info, task = run.info, tasks.get(run.cfg.task)
  variables = jax.device_get(run.variables)
  predict = make_predict(run.model, variables, info["mean"], info["std"], task)
  exported = export_predict(predict, tuple(info["image_shape"]), platforms)
  encoders = tasks.encoders(task, run.model, info)
  assets = tasks.assets(task, run)
  meta = {"format": FORMAT, "task": task.NAME, "class_names": info["class_names"],
          "image_shape": list(info["image_shape"]), "pp_eval": info.get("pp_eval", ""), "input_dtype": "uint8",
          "outputs": [{"name": n, "datatype": t, "shape": ["b", *shape]}
                      for n, t, shape in tasks.outputs(task, run.model, info)],
          "platforms": list(exported.platforms), "workdir": os.path.abspath(workdir),
          "step": int(run.state.step),
          "encoders": {n: {"shape": ["b", *e.shape], "dtype": e.dtype} for n, e in encoders.items()},
          "assets": {"meta": assets["meta"], "files": sorted(assets["files"])}}
  write(out, exported, meta, {n: export_encoder(e, variables, platforms) for n, e in encoders.items()},
        assets["files"])
  return meta


class Predictor:
  """A loaded artifact: `predictor(uint8 images [N, H, W, C]) -> {output name: array}` (meta.json "outputs":
  classification's logits and probabilities [N, K], detection's TF Object Detection API outputs). `encoders`:
  {name: contract.Encoder} of its encoder modules (their fn ignores the variables: the weights are inside);
  `assets`: {"meta", "files": {name: bytes}}."""

  def __init__(self, exported, meta, encoders=None, assets=None):
    self.exported = exported
    self.meta = meta
    self.encoders = encoders or {}
    self.assets = assets or {"meta": {}, "files": {}}
    self.class_names = meta["class_names"]
    self.image_shape = tuple(meta["image_shape"])
    self._call = jax.jit(exported.call)

  def __call__(self, images):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
      raise UserError(f"expected uint8 images of shape [N, {', '.join(map(str, self.image_shape))}], "
                      f"got {images.dtype} {list(images.shape)}")
    return self._call(images)


def load(path):
  """Reads an artifact written by `export_workdir` (needs only jax, not the model code)."""
  try:
    with zipfile.ZipFile(path) as z:
      blob = z.read(MODULE_NAME)
      meta = json.loads(z.read(META_NAME))
      modules = {n: z.read(f"{n}.jaxexport") for n in meta.get("encoders", {})}
      assets = {"meta": meta.get("assets", {}).get("meta", {}),
                "files": {n: z.read(f"{ASSETS}/{n}") for n in meta.get("assets", {}).get("files", [])}}
  except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not an imgrec export artifact ({type(e).__name__}: {e}); "
                    "write one with `imgrec export --workdir W --out F`") from None
  encoders = {}
  for name, m in modules.items():
    exp, spec = jax.export.deserialize(bytearray(m)), meta["encoders"][name]
    encoders[name] = contract.Encoder(lambda variables, x, exp=exp: exp.call(x), tuple(spec["shape"][1:]),
                                      spec["dtype"])
  return Predictor(jax.export.deserialize(bytearray(blob)), meta, encoders, assets)
