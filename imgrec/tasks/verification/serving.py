"""The verification task's own HTTP routes (the tasks contract's optional `routes()`): 1:1 verification and a 1:N
gallery, under /v1/models/NAME[/versions/V]:

  POST   :verify               image1, image2 [, threshold] -> {"score", "same", "threshold"}
  POST   /gallery              identity, one or more images -> enrolled (the identity's rows, the gallery's size)
  POST   /gallery:search       image [, k] -> {"matches": [{"identity", "score"}, ...]} best first
  GET    /gallery              the enrolled identities and their row counts
  DELETE /gallery/{identity}   removes every embedding of an identity

A request is a multipart form (images as files under their field names, the rest as text fields), or a JSON
object with the images as base64 strings: {"image1": b64, "image2": b64}, {"identity": name, "images": [b64, ..]}
(or "image": b64), {"image": b64, "k": 5}; k and threshold may also be query parameters. Every image goes through
the server's upload decoding (the run's eval preprocessing, or a resize to the model's input), so two images of
different sizes are compared as the run's evaluation compares them.

The score is the cosine of the two L2-normalised embeddings; "same" is score > threshold, the protocol's rule.
The threshold is the request's `threshold`, else the one the run calibrated (verification.calibrate_far) in the
evaluation record of the served checkpoint's step (metrics.jsonl).

The gallery is gallery.Gallery at W/gallery.npz beside the run (embeddings only, saved atomically at every
change and read again when the file changed behind it), one for every name and version served from the run;
search is exact (gallery.py says why). Two server processes may share a run's gallery, but not write it at the
same instant (each would save its own copy). Enroll and delete are admin routes: with keys configured they need
an admin key (--admin-keys-file), as model management does; search, listing and :verify an inference key. The
gallery's size and search latency are the model's imgrec_task_items{item="gallery_embeddings"|
"gallery_identities"} and imgrec_task_seconds{work="gallery_search"} in /metrics.
"""
import base64
import binascii
import json
import math
import os
import weakref

import anyio
import numpy as np
from starlette.exceptions import HTTPException

from imgrec.errors import UserError
from imgrec.tasks.verification import gallery as gallery_lib

GALLERY_FILE = "gallery.npz"
DEFAULT_K = 5
MAX_K = 1000
VERIFY_HELP = ("send two images: multipart files image1 and image2 (curl -F image1=@a.png -F image2=@b.png URL) "
               'or JSON {"image1": base64, "image2": base64}')


# ---------------------------------------------------------------- request fields

async def read_fields(request, served):
  """The request's fields -> ({name: [value, ...]}, encoding): multipart files as bytes and text fields as str
  ("form"), or a JSON object's values ("json"), the query's parameters added as text; an image body of any other
  type is the field "image" ("body")."""
  fields = {}
  for key, value in request.query_params.multi_items():
    fields.setdefault(key, []).append(value)
  kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
  limits = served.options.limits
  if kind == "multipart/form-data":
    form = await request.form(max_files=limits.max_images, max_fields=limits.max_images,
                              max_part_size=limits.max_body_bytes)
    for key, value in form.multi_items():
      fields.setdefault(key, []).append(await value.read() if hasattr(value, "read") else value)
    return fields, "form"
  raw = await request.body()
  if kind == "application/json":
    try:
      body = json.loads(raw)
    except (ValueError, RecursionError) as e:
      raise HTTPException(400, f"body is not valid JSON: {e}")
    if not isinstance(body, dict):
      raise HTTPException(400, f"the JSON body must be an object, got {type(body).__name__}")
    for key, value in body.items():
      fields.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return fields, "json"
  if raw:
    fields["image"] = [raw]
  return fields, "body"


def image_bytes(encoding, name, value):
  """One image field's value as encoded image bytes: a multipart file, or a base64 string in JSON."""
  if encoding == "json":
    if not isinstance(value, str):
      raise HTTPException(400, f"field {name!r} must be a base64 string of an encoded image, got "
                               f"{type(value).__name__}")
    try:
      return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
      raise HTTPException(400, f"field {name!r} is not valid base64; encode the image file's bytes")
  if not isinstance(value, bytes):
    raise HTTPException(400, f"field {name!r} must be an image file (curl -F {name}=@face.png), not text")
  return value


def images_of(fields, encoding, names, what):
  """Every image under the field names `names` (the first that is present) -> [bytes]; none is a 400 saying
  what to send (`what`)."""
  for name in names:
    if fields.get(name):
      return [image_bytes(encoding, name, v) for v in fields[name]]
  raise HTTPException(400, f"missing image field {names[0]!r}; {what}")


def one_value(fields, name):
  values = fields.get(name) or [None]
  if len(values) > 1:
    raise HTTPException(400, f"field {name!r} is given {len(values)} times; give it once")
  return values[0]


def number(fields, name, default, check, must):
  """A numeric field (JSON number or text) checked by `check`, else a 400 saying it `must` be."""
  value = one_value(fields, name)
  if value is None:
    return default
  try:
    x = float(value) if not isinstance(value, bool) else math.nan
  except (TypeError, ValueError):
    x = math.nan
  if not check(x):
    raise HTTPException(400, f"{name} must be {must}, got {value!r}")
  return x


async def embed(served, raws):
  """Encoded images -> their L2-normalised embeddings [n, D] (the served model's `embeddings` output)."""
  images = [(await served.read_image(raw))[0] for raw in raws]
  return np.asarray((await served.infer(np.stack(images), "uint8"))["embeddings"], np.float32)


# ---------------------------------------------------------------- :verify

def calibrated_threshold(served):
  """The threshold the run calibrated for its served checkpoint: the last evaluation record of that step that
  holds one (cached in served.state), or None."""
  if "threshold" not in served.state:
    found = [r for r in served.records() if r.get("step") == served.step and "threshold" in r]
    served.state["threshold"] = float(found[-1]["threshold"]) if found else None
  return served.state["threshold"]


async def verify(request, served):
  """Two images -> {"score": cosine, "same": score > threshold, "threshold"}."""
  fields, encoding = await read_fields(request, served)
  threshold = number(fields, "threshold", None, lambda x: -1 <= x <= 1, "a number in [-1, 1] (a cosine)")
  if threshold is None:
    threshold = calibrated_threshold(served)
    if threshold is None:
      raise HTTPException(400, f"the run at {served.workdir} has no calibrated threshold for its checkpoint of "
                               f"step {served.step} (no evaluation of that step in metrics.jsonl); give one in "
                               "the request (`threshold`, a cosine in [-1, 1])")
  pair = [images_of(fields, encoding, (name,), VERIFY_HELP) for name in ("image1", "image2")]
  if any(len(p) > 1 for p in pair):
    raise HTTPException(400, f"image1 and image2 each take one image; {VERIFY_HELP}")
  e = await embed(served, [pair[0][0], pair[1][0]])
  score = float(e[0] @ e[1])
  return {"score": score, "same": score > threshold, "threshold": threshold}


# ---------------------------------------------------------------- the gallery

_OPEN = weakref.WeakValueDictionary()  # gallery file -> the one Gallery (one lock) of every model served from it


def gallery_of(served):
  """The model's gallery (W/gallery.npz, opened at its first gallery request), one object per file for every
  name and version served from the run, so their changes take turns under its lock."""
  if "gallery" not in served.state:
    path = os.path.join(served.workdir, GALLERY_FILE)
    g = _OPEN.get(path)
    if g is None:
      dim = next(shape[0] for name, _, shape in served.spec.outputs if name == "embeddings")
      try:
        g = _OPEN[path] = gallery_lib.Gallery.open(path, dim)
      except UserError as e:
        raise HTTPException(500, str(e))
    served.state["gallery"] = g
  return served.state["gallery"]


async def run(fn, *args):
  """A gallery call in a worker thread (it may wait for the gallery's lock, save or read the file); its
  UserError (a bad name, a gallery file that is not one) is a 400 with that message."""
  try:
    return await anyio.to_thread.run_sync(fn, *args)
  except UserError as e:
    raise HTTPException(400, str(e))


def count(served, g):
  served.items("gallery_embeddings").set(len(g))
  served.items("gallery_identities").set(len(g.identities))


def identity_of(value):
  try:
    return gallery_lib.check_identity(value)
  except UserError as e:
    raise HTTPException(400, str(e))


async def enroll(request, served):
  """An identity and one or more images -> their embeddings added to the gallery (saved before answering)."""
  fields, encoding = await read_fields(request, served)
  name = identity_of(one_value(fields, "identity"))
  raws = images_of(fields, encoding, ("image", "images"), "send the identity's image(s): multipart files under "
                   '"image" (curl -F identity=NAME -F image=@a.png URL) or JSON {"identity": NAME, "images": '
                   "[base64, ...]}")
  if len(raws) > served.options.limits.max_images:
    raise HTTPException(400, f"{len(raws)} images in one enrollment, more than the server's limit of "
                             f"{served.options.limits.max_images}; enroll them in several requests")
  e = await embed(served, raws)
  g = gallery_of(served)
  rows = await run(g.enroll, name, e)
  count(served, g)
  return {"identity": name, "enrolled": len(raws), "rows": rows, "gallery_size": len(g)}


async def search(request, served):
  """An image -> the k best identities of the gallery with their scores (an identity's best row's cosine)."""
  fields, encoding = await read_fields(request, served)
  k = int(number(fields, "k", DEFAULT_K, lambda x: x.is_integer() and 1 <= x <= MAX_K,
                 f"an integer in [1, {MAX_K}]"))
  raws = images_of(fields, encoding, ("image",), "send one image: the body itself, a multipart file \"image\" "
                   '(curl -F image=@face.png URL) or JSON {"image": base64, "k": 5}')
  if len(raws) > 1:
    raise HTTPException(400, f"search takes one image, got {len(raws)}")
  e = await embed(served, raws)
  g = gallery_of(served)
  with served.seconds("gallery_search").time():
    matches = (await run(g.search, e, k))[0]
  count(served, g)
  return {"matches": [{"identity": n, "score": s} for n, s in matches], "k": k, "gallery_size": len(g)}


async def listing(request, served):
  """The enrolled identities with their row counts."""
  g = gallery_of(served)
  counts = await run(g.counts)
  count(served, g)
  return {"identities": counts, "gallery_size": sum(counts.values())}


async def delete(request, served):
  """Removes every row of the path's identity (saved before answering); an identity not enrolled is a 404."""
  if not request.path_params["identity"].strip():
    raise HTTPException(400, "name the identity to delete: DELETE /v1/models/NAME/gallery/IDENTITY")
  name = identity_of(request.path_params["identity"])
  g = gallery_of(served)
  if name not in await run(g.counts):
    raise HTTPException(404, f"identity {name!r} is not in the gallery; nothing was deleted (GET .../gallery "
                             "lists the enrolled ones)")
  removed = await run(g.delete, name)
  count(served, g)
  return {"identity": name, "deleted": removed, "gallery_size": len(g)}


def routes():
  """The task's routes (tasks contract): [(method, suffix, handler(request, served))]."""
  return [("POST", ":verify", verify), ("POST", "/gallery", enroll, True), ("GET", "/gallery", listing),
          ("POST", "/gallery:search", search), ("DELETE", "/gallery/{identity:path}", delete, True)]
