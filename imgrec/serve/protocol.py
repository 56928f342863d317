"""Request parsing and validation for the server's protocols, as pure functions over bytes and dicts.

Everything here runs before any model work: a request that fails raises `RequestError` with an HTTP
status and a message naming what was wrong. Protocols:
  - Open Inference Protocol v2 (KServe / Triton) JSON, with the binary tensor extension
    (`Inference-Header-Content-Length`, `binary_data_size` / `binary_data` parameters) and the
    classification extension (`parameters.classification = k` -> "score:index:label" strings);
  - encoded images (PNG / JPEG) with a format allow-list and a pixel cap checked from the header.
The gRPC service (grpc_service.py) parses its messages with the same tensor helpers and limits; the REST routes'
bodies (TF-Serving, uploads, Hugging Face JSON) are rest.py's, on the same helpers.
JSON is parsed with orjson (the standard parser only decides what orjson refuses: NaN, huge integers);
integer inputs accept integral floats such as 12.0, which some clients write for every number.
A parsed image batch is `(array, kind)`: kind "uint8" (pixels, normalised on device) or "float32"
(already normalised by the client).
"""
import base64
import binascii
import dataclasses
import io
import json
import math
import struct

import anyio
import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from imgrec.data import preprocess

INPUT_NAME = "images"

# OIP v2 datatype -> numpy dtype. BYTES tensors are object arrays of `bytes`, one element each: in JSON a string
# (UTF-8 text; base64 for the image input), in binary form (the binary extension, gRPC raw contents) each
# element is a 4-byte little-endian length and its bytes.
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
IMAGE_DTYPES = ("UINT8", "FP32", "BYTES")  # what the image input accepts
MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"),
         "WEBP": (b"RIFF",), "BMP": (b"BM",), "TIFF": (b"II*\x00", b"MM\x00*")}


class RequestError(Exception):
  """A bad request: HTTP `status`, a message for the client, optional extra headers."""

  def __init__(self, status, message, headers=None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers or {}


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 32 << 20   # whole request body (413 above)
  max_json_depth: int = 32         # nesting of arrays/objects (400 above)
  max_pixels: int = 16_000_000     # per decoded image, checked from the header before decoding (413 above)
  max_images: int = 1024           # images per request (400 above)
  max_elements: int = 65536        # elements of each input beside the images (400 above)
  formats: tuple = ("PNG", "JPEG")  # encoded image allow-list (415 otherwise)


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """An input a task takes beside the images, once per request (not per image): e.g. open-vocabulary labels,
  InputSpec("labels", "BYTES", ("N",)). A named size (a string) is free; an integer one must match."""
  name: str
  datatype: str
  shape: tuple
  required: bool = True


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the parsers need to know about a model."""
  image_shape: tuple   # (H, W, C)
  class_names: tuple
  pp_eval: str = ""    # the run's eval preprocessing (dataset.json), applied to encoded images; "": resize
  outputs: tuple = ()  # served.served_outputs: (name, datatype, per-example shape; a "K" left: len(class_names))
  classify: object = None  # (values, k) -> per row k "score:index:label" strings; None: no classification extension
  inputs: tuple = ()   # InputSpec of each input beside the images
  parameters: tuple = ()  # request parameters the task reads (strings), e.g. an open-vocabulary "template"
  images_optional: bool = False  # a request may hold only the inputs beside the images (text to embed)


# Work above these sizes runs in a worker thread, below them on the event loop: a thread hop costs about
# 0.2 ms, which a one-image request would pay for nothing (its reply takes 5 us to build), while a big one
# would hold the event loop for milliseconds (a 1024-image classification reply takes about 4 ms).
BIG_BODY_BYTES = 65536
BIG_REPLY_IMAGES = 256


async def off_loop(heavy, fn, *args):
  """`fn(*args)`, in a worker thread when `heavy`, else inline."""
  return await anyio.to_thread.run_sync(fn, *args) if heavy else fn(*args)


# ---------------------------------------------------------------- JSON

_DROP = bytes(range(256)).translate(None, b'[]{}"')  # every byte but brackets and quotes


def check_json_depth(raw, max_depth):
  """Rejects JSON nested deeper than `max_depth` without parsing it (brackets inside strings ignored).

  Byte-level and vectorised, so it costs little even for large tensors in JSON."""
  s = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)  # escapes first, then keep [ ] { } "
  if b'"' in s:
    s = b"".join(s.split(b'"')[0::2])  # outside strings only
  if not s:
    return
  a = np.frombuffer(s, np.uint8)
  steps = np.where((a == ord("[")) | (a == ord("{")), 1, -1)
  depth = int(np.max(np.cumsum(steps)))
  if depth > max_depth:
    raise RequestError(400, f"JSON nested {depth} levels deep, more than the limit of {max_depth}")


def load_json(raw, limits):
  check_json_depth(raw, limits.max_json_depth)
  try:
    body = orjson.loads(raw)  # several times faster on number arrays
  except orjson.JSONDecodeError:  # NaN literals, integers over 64 bits, bad JSON: the standard parser decides
    try:
      body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
      raise RequestError(400, f"body is not valid JSON: {e}")
  if not isinstance(body, dict):
    raise RequestError(400, f"JSON body must be an object, got {type(body).__name__}")
  return body


# ---------------------------------------------------------------- tensors

def check_shape(name, shape, limits, elements_per_image=None):
  """Validates an OIP `shape` and returns its element count, before anything is allocated. The limit: that of
  the images at `elements_per_image`, or (None) limits.max_elements for an input beside the images."""
  if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
    raise RequestError(400, f"input '{name}': shape must be a list of integers, got {shape!r}")
  if len(shape) > 8 or any(d < 0 for d in shape):
    raise RequestError(400, f"input '{name}': shape {shape} must have at most 8 non-negative dimensions")
  count = math.prod(shape)  # Python ints: no overflow
  limit = limits.max_elements if elements_per_image is None else limits.max_images * elements_per_image
  if count > limit:
    raise RequestError(400, f"input '{name}': shape {shape} has {count} elements, more than the limit of "
                            f"{limit}" + ("" if elements_per_image is None else f" ({limits.max_images} images)"))
  return count


def tensor_from_json(name, datatype, shape, data, count, b64=False):
  """OIP JSON `data` (flat or nested, row-major) -> numpy array of `shape`. BYTES elements are strings: UTF-8
  text, or with `b64` (the image input's encoded images) base64."""
  if datatype == "BYTES":
    flat = flatten_data(name, data)
    if len(flat) != count:
      raise RequestError(400, f"input '{name}': {len(flat)} values for shape {shape} ({count} elements)")
    if not all(isinstance(v, str) for v in flat):
      raise RequestError(400, f"input '{name}': BYTES data must be strings" + (" (base64 encoded images)" if b64
                                                                                else ""))
    return bytes_array([b64decode(name, v) if b64 else v.encode() for v in flat], shape)
  dtype = np.dtype(DTYPES[datatype])
  try:
    arr = np.array(data)
  except (ValueError, OverflowError) as e:
    raise RequestError(400, f"input '{name}': data is not a regular array: {e}")
  if arr.size != count:
    raise RequestError(400, f"input '{name}': {arr.size} values for shape {shape} ({count} elements)")
  return cast_numbers(name, arr, dtype).reshape(shape)


def flatten_data(name, data):
  if not isinstance(data, list):
    raise RequestError(400, f"input '{name}': data must be a list")
  out, stack = [], [data]
  while stack:  # iterative: depth is already bounded, but keep it off the Python stack anyway
    v = stack.pop()
    if isinstance(v, list):
      stack.extend(reversed(v))
    else:
      out.append(v)
  return out


def cast_numbers(name, arr, dtype):
  """Numbers (from JSON or typed gRPC contents) -> dtype, refusing values the dtype cannot hold."""
  if arr.size == 0:
    return arr.astype(dtype)
  if dtype.kind in "iu":
    info = np.iinfo(dtype)
    if arr.dtype.kind == "f":  # clients that write every JSON number as a float send 12.0 for 12
      fraction = arr[~np.isfinite(arr) | (arr != np.floor(arr))]
      if fraction.size:
        raise RequestError(400, f"input '{name}': {dtype.name} data must be integers, got {float(fraction[0])!r}")
      if arr.min() < float(info.min) or arr.max() >= float(info.max) + 1:  # exact at the int64 bounds too
        raise RequestError(400, f"input '{name}': values must be within [{info.min}, {info.max}] for {dtype.name}")
    elif arr.dtype.kind not in "iub":
      raise RequestError(400, f"input '{name}': {dtype.name} data must be integers, got {arr.dtype.kind!r} values")
    elif arr.dtype.kind != "b" and (arr.min() < info.min or arr.max() > info.max):
      raise RequestError(400, f"input '{name}': values must be within [{info.min}, {info.max}] for {dtype.name}")
  elif dtype.kind == "f":
    if arr.dtype.kind not in "iuf":
      raise RequestError(400, f"input '{name}': {dtype.name} data must be numbers")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.abs(arr).max() > np.finfo(dtype).max:
      raise RequestError(400, f"input '{name}': values must be finite and fit {dtype.name}")
  elif dtype.kind == "b" and arr.dtype.kind != "b":
    raise RequestError(400, f"input '{name}': BOOL data must be true/false")
  return arr.astype(dtype)


def tensor_from_binary(name, datatype, shape, buf, count):
  """A binary-extension tensor or gRPC raw contents: little-endian row-major bytes, or length-prefixed BYTES
  elements."""
  if datatype == "BYTES":
    items = split_bytes_elements(name, buf)
    if len(items) != count:
      raise RequestError(400, f"input '{name}': {len(items)} BYTES elements for shape {shape} ({count} elements)")
    return bytes_array(items, shape)
  dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
  if len(buf) != count * dtype.itemsize:
    raise RequestError(400, f"input '{name}': {len(buf)} bytes of tensor data do not match shape {shape} x "
                            f"{datatype} ({count * dtype.itemsize} bytes)")
  arr = np.frombuffer(buf, dtype).reshape(shape)
  if dtype.kind == "f" and not np.all(np.isfinite(arr)):
    raise RequestError(400, f"input '{name}': values must be finite")
  return arr.astype(dtype.newbyteorder("="), copy=False)  # a view of the request on little-endian hosts


def split_bytes_elements(name, buf):
  items, i = [], 0
  while i < len(buf):
    if i + 4 > len(buf):
      raise RequestError(400, f"input '{name}': truncated BYTES element length at offset {i}")
    (n,) = struct.unpack_from("<I", buf, i)
    if i + 4 + n > len(buf):
      raise RequestError(400, f"input '{name}': BYTES element of {n} bytes at offset {i} runs past the data")
    items.append(bytes(buf[i + 4:i + 4 + n]))
    i += 4 + n
  return items


def join_bytes_elements(items):
  return b"".join(struct.pack("<I", len(b)) + b for b in items)


def bytes_array(items, shape):
  """A list of `bytes` -> an object array of `shape` holding them (np.array would unpack nothing, but could
  make a fixed-width bytes_ array that drops trailing zero bytes)."""
  arr = np.empty(len(items), dtype=object)
  arr[:] = items
  return arr.reshape(shape)


def bytes_items(values):
  """A BYTES tensor (object array of bytes or str) -> its elements in row-major order, as bytes."""
  return [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(values, dtype=object).reshape(-1)]


def text_or_base64(items):
  """BYTES elements for JSON -> (strings, whether they are base64): UTF-8 text as itself when every element is
  text, else every element base64 (JSON strings cannot carry arbitrary bytes)."""
  try:
    return [b.decode("utf-8") for b in items], False
  except UnicodeDecodeError:
    return [base64.b64encode(b).decode("ascii") for b in items], True


def b64decode(name, s):
  try:
    return base64.b64decode(s, validate=True)
  except (binascii.Error, ValueError):
    raise RequestError(400, f"input '{name}': not valid base64")


# ---------------------------------------------------------------- images

def sniff_format(data):
  for fmt, prefixes in MAGIC.items():
    if any(data.startswith(p) for p in prefixes):
      return fmt
  return None


def decode_image(data, spec, limits):
  """Encoded PNG/JPEG -> uint8 (H, W, C) of the model's shape (see `decode_upload`)."""
  return decode_upload(data, spec, limits)[0]


def decode_upload(data, spec, limits):
  """Encoded PNG/JPEG -> (uint8 (H, W, C) of the model's shape, the map (sx, sy, tx, ty) from its pixels back to
  the encoded image's, that image's (width, height)). The pixel count is checked from the header, so a small
  file that would decode to a huge image is refused without decoding it."""
  fmt = sniff_format(data)
  if fmt is None or fmt not in limits.formats:
    raise RequestError(415, f"unsupported image format ({fmt or 'unknown'}); send one of {', '.join(limits.formats)}")
  try:
    im = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
  except Image.DecompressionBombError as e:
    raise RequestError(413, f"image too large: {e}")
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise RequestError(400, f"cannot read the {fmt} image: {e}")
  w, h = im.size
  if w * h > limits.max_pixels:
    raise RequestError(413, f"image is {w}x{h} = {w * h} pixels, more than the limit of {limits.max_pixels}; "
                            f"resize it first")
  H, W, C = spec.image_shape
  if spec.pp_eval:  # exactly as the run evaluated: e.g. resize_small + central_crop, not a squash
    try:
      image, to_source = preprocess.for_model_with_map(data, spec.pp_eval, spec.image_shape)
    except preprocess.BadImage as e:
      raise RequestError(400, f"cannot decode the {fmt} image: {e}")
    return image, to_source, (w, h)
  try:
    im = im.convert("L" if C == 1 else "RGB")
  except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
    raise RequestError(400, f"cannot decode the {fmt} image: {e}")
  if im.size != (W, H):
    im = im.resize((W, H), Image.Resampling.BILINEAR)
  return np.asarray(im, np.uint8).reshape(H, W, C), (w / W, h / H, 0.0, 0.0), (w, h)


def decode_images(items, spec, limits):
  if len(items) > limits.max_images:
    raise RequestError(400, f"{len(items)} images in one request, more than the limit of {limits.max_images}")
  return np.stack([decode_image(b, spec, limits) for b in items]) if items else \
      np.zeros((0, *spec.image_shape), np.uint8)


def image_batch(name, arr, spec, limits):
  """A tensor for the image input -> (batch, kind); checks it is NHWC of the model's image shape."""
  if arr.dtype == object:  # BYTES: encoded images, one per element
    return decode_images(list(arr.reshape(-1)), spec, limits), "uint8"
  if arr.dtype not in (np.uint8, np.float32):
    raise RequestError(400, f"input '{name}': datatype {arr.dtype} is not accepted; send UINT8 pixels, "
                            f"FP32 normalised pixels, or BYTES encoded images")
  if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(spec.image_shape):
    raise RequestError(400, f"input '{name}': shape {list(arr.shape)} does not match [-1, "
                            f"{', '.join(map(str, spec.image_shape))}] (NHWC)")
  if arr.shape[0] > limits.max_images:
    raise RequestError(400, f"input '{name}': {arr.shape[0]} images, more than the limit of {limits.max_images}")
  return arr, ("uint8" if arr.dtype == np.uint8 else "float32")


# ---------------------------------------------------------------- OIP v2

EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "statistics", "model_configuration")


def _dims(shape):
  return [d if isinstance(d, int) else -1 for d in shape]  # a size the request decides (a named one): -1


def model_metadata(model, served):
  """OIP v2 model metadata (HTTP JSON; the gRPC message has the same fields)."""
  H, W, C = model.spec.image_shape
  K = len(model.spec.class_names)
  extras = [{"name": i.name, "datatype": i.datatype, "shape": _dims(i.shape)} for i in model.spec.inputs]
  return {"name": model.name, "versions": [str(x.version) for x in served if x.name == model.name],
          "platform": "jax_flax",
          "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, H, W, C]}, *extras],
          "outputs": [{"name": n, "datatype": dtype, "shape": [-1, *_dims(K if d == "K" else d for d in shape)]}
                      for n, dtype, shape in model.spec.outputs]}


@dataclasses.dataclass
class InferRequest:
  images: np.ndarray
  kind: str             # "uint8" | "float32"
  outputs: list         # [{"name", "binary", "classification"}]
  id: str | None
  extras: dict = dataclasses.field(default_factory=dict)  # {input name: array} of the inputs beside the images,
                                                          # and the task's request parameters {name: str}


def check_input(name, datatype, shape, spec, limits):
  """An input's name, datatype and shape against the model's inputs -> its element count (nothing read yet)."""
  extras = {i.name: i for i in spec.inputs}
  if name != INPUT_NAME and name not in extras:
    raise RequestError(400, f"unknown input {name!r}; this model takes {[INPUT_NAME, *extras]}")
  if name == INPUT_NAME:
    if datatype not in IMAGE_DTYPES:
      raise RequestError(400, f"input '{name}': datatype {datatype!r} is not accepted; use one of {IMAGE_DTYPES}")
    return check_shape(name, shape, limits, 1 if datatype == "BYTES" else math.prod(spec.image_shape))
  if datatype != extras[name].datatype:
    raise RequestError(400, f"input '{name}': datatype {datatype!r} is not accepted; use {extras[name].datatype!r}")
  count = check_shape(name, shape, limits)
  want = extras[name].shape
  if len(shape) != len(want) or any(isinstance(w, int) and w != d for w, d in zip(want, shape)):
    raise RequestError(400, f"input '{name}': shape {shape} does not match {_dims(want)}")
  return count


def request_inputs(tensors, spec, limits, parameters=None):
  """{input name: array} of one request and its parameters -> (images or None, kind, extras): the images checked
  as a batch (None only for a model whose images are optional, e.g. text to embed), every required input beside
  them present, the task's parameters (strings) among the extras."""
  if INPUT_NAME not in tensors and not (spec.images_optional and tensors):
    raise RequestError(400, f"the request has no input '{INPUT_NAME}'")
  missing = [i.name for i in spec.inputs if i.required and i.name not in tensors]
  if missing:
    raise RequestError(400, f"this model also needs the input(s) {missing}")
  images, kind = (image_batch(INPUT_NAME, tensors[INPUT_NAME], spec, limits) if INPUT_NAME in tensors
                  else (None, "uint8"))
  return images, kind, {**{n: v for n, v in tensors.items() if n != INPUT_NAME},
                        **task_parameters(parameters, spec)}


def task_parameters(parameters, spec):
  """The request parameters the task reads ({name: str}); the protocol's own (binary_data_output, ...) and
  unknown ones are left alone, as Triton does."""
  if not isinstance(parameters, dict):
    if parameters is not None:
      raise RequestError(400, "'parameters' must be an object")
    return {}
  found = {}
  for name in spec.parameters:
    if name in parameters:
      value = parameters[name]
      if not isinstance(value, str):
        raise RequestError(400, f"parameter {name!r} must be a string, got {type(value).__name__}")
      found[name] = value
  return found


def count(images):
  """Images in a request (0 for one holding only the inputs beside them)."""
  return 0 if images is None else len(images)


def parse_v2_infer(raw, header_length, spec, limits):
  """OIP v2 infer body (JSON, or JSON + binary tensors when `header_length` is given) -> InferRequest. Binary
  tensors follow the JSON header in input order, each `binary_data_size` bytes."""
  if header_length is not None:
    try:
      n = int(header_length)
    except ValueError:
      raise RequestError(400, f"Inference-Header-Content-Length must be an integer, got {header_length!r}")
    if not 0 <= n <= len(raw):
      raise RequestError(400, f"Inference-Header-Content-Length {n} is outside the body of {len(raw)} bytes")
    head, tail = raw[:n], memoryview(raw)[n:]
  else:
    head, tail = raw, memoryview(b"")
  body = load_json(head, limits)
  inputs = body.get("inputs")
  if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
    raise RequestError(400, f"'inputs' must be a list of tensors, one of them named '{INPUT_NAME}'")
  tensors, offset = {}, 0
  for t in inputs:
    arr, offset = _v2_tensor(t, tail, offset, spec, limits)
    tensors[t["name"]] = arr
  if offset != len(tail):
    raise RequestError(400, f"{len(tail) - offset} binary bytes follow the JSON header beyond the inputs' "
                            "binary_data_size")
  rparams = body.get("parameters") or {}
  images, kind, extras = request_inputs(tensors, spec, limits, rparams)
  binary_default = bool(isinstance(rparams, dict) and rparams.get("binary_data_output", False))
  outputs = requested_outputs(body.get("outputs"), binary_default, spec)
  rid = body.get("id")
  return InferRequest(images, kind, outputs, rid if isinstance(rid, str) else None, extras)


def _v2_tensor(t, tail, offset, spec, limits):
  """One OIP JSON input (its data in JSON, or binary at `offset` of `tail`) -> (array, the next offset)."""
  name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
  count = check_input(name, datatype, shape, spec, limits)
  params = t.get("parameters") or {}
  if not isinstance(params, dict):
    raise RequestError(400, f"input '{name}': parameters must be an object")
  size = params.get("binary_data_size")
  if size is None:
    if "data" not in t:
      raise RequestError(400, f"input '{name}': needs 'data' or parameters.binary_data_size")
    return tensor_from_json(name, datatype, shape, t["data"], count, b64=name == INPUT_NAME), offset
  if not isinstance(size, int) or isinstance(size, bool) or size < 0:
    raise RequestError(400, f"input '{name}': binary_data_size must be a non-negative integer")
  if offset + size > len(tail):
    raise RequestError(400, f"input '{name}': binary_data_size {size} but {len(tail) - offset} binary bytes "
                            "follow the JSON header")
  return tensor_from_binary(name, datatype, shape, tail[offset:offset + size], count), offset + size


def requested_outputs(outputs, binary_default, spec):
  """OIP `outputs` ([{"name", "parameters"}] or None for all) -> [{"name", "datatype", "binary", "classification"}]
  (datatype: the task's, from the model's spec)."""
  datatypes = {n: d for n, d, _ in spec.outputs}
  names = list(datatypes)
  if outputs is None:  # all the request gave rise to (a task may answer some only for some inputs)
    return [{"name": n, "datatype": datatypes[n], "binary": binary_default, "classification": 0, "asked": False}
            for n in names]
  if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
    raise RequestError(400, "'outputs' must be a list of objects")
  result = []
  for o in outputs:
    name, params = o.get("name"), o.get("parameters") or {}
    if name not in names:
      raise RequestError(400, f"unknown output {name!r}; this model has {names}")
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
      raise RequestError(400, f"output '{name}': classification must be a non-negative integer")
    if k and spec.classify is None:
      raise RequestError(400, f"output '{name}': this model is not a classifier; drop the classification parameter")
    result.append({"name": name, "datatype": datatypes[name], "binary": bool(params.get("binary_data", binary_default)),
                   "classification": min(k, len(spec.class_names)), "asked": True})
  return result


def answered(outputs, tensors):
  """The requested outputs the model's answer holds; one asked for by name but not answered (an open-vocabulary
  model's logits of a request without labels) is an error naming what it needs."""
  missing = [o["name"] for o in outputs if o["asked"] and o["name"] not in tensors]
  if missing:
    raise RequestError(400, f"output {missing[0]!r} is not answered for this request's inputs (it has "
                            f"{sorted(tensors)}); send the inputs it needs")
  return [o for o in outputs if o["name"] in tensors]


def tensor_bytes(values, datatype):
  """An output tensor's raw bytes (binary extension, gRPC raw_output_contents): little-endian row-major numbers,
  or length-prefixed BYTES elements."""
  if datatype == "BYTES":
    return join_bytes_elements(bytes_items(values))
  return np.ascontiguousarray(values, np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()


def output_entry(o, values, classify):
  """-> (the output's JSON entry, its binary bytes or None)."""
  k = o["classification"]
  if k:
    rows = classify(values, k)
    values = bytes_array([s.encode() for r in rows for s in r], (len(rows), k))
  datatype = "BYTES" if k else o["datatype"]
  entry = {"name": o["name"], "datatype": datatype, "shape": list(values.shape)}
  if o["binary"]:
    blob = tensor_bytes(values, datatype)
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob
  if datatype == "BYTES":
    entry["data"], encoded = text_or_base64(bytes_items(values))
    if encoded:  # not text: the client must decode each string
      entry["parameters"] = {"content_encoding": "base64"}
  else:
    entry["data"] = values.ravel().tolist()
  return entry, None


def v2_response(model_name, version, request, tensors, classify):
  """-> (body bytes, extra headers) for the model's outputs {name: array}; `classify(values, k)`: the task's
  classification-extension strings. Binary outputs follow the JSON header, in output order."""
  outs, blobs = [], []
  for o in answered(request.outputs, tensors):
    entry, blob = output_entry(o, tensors[o["name"]], classify)
    outs.append(entry)
    if blob is not None:
      blobs.append(blob)
  resp = {"model_name": model_name, "model_version": str(version), "outputs": outs}
  if request.id is not None:
    resp["id"] = request.id
  if getattr(tensors, "parameters", None):  # what the task says of its answer (labels cut to the text length)
    resp["parameters"] = tensors.parameters
  head = orjson.dumps(resp)
  if not blobs:
    return head, {"content-type": "application/json"}
  return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                  "inference-header-content-length": str(len(head))}
