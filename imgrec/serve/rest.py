"""The REST routes' bodies beside OIP v2 (protocol.py), on its tensor helpers and limits, as pure functions:

  - TF-Serving REST `:predict` / `:classify` bodies: `instances` rows or `inputs` columns, images as nested numbers
    or `{"b64": ...}`, inputs beside the images in the columnar form; replies as TF-Serving writes them;
  - uploads: an image as the body or a multipart file, the task's inputs as query or form fields;
  - Hugging Face's pipeline JSON (`{"inputs": base64 image, "parameters": {...}}`) on the upload route;
  - the upload reply's media type from the client's Accept.
"""
import base64

import numpy as np

from imgrec.serve.protocol import (DTYPES, INPUT_NAME, RequestError, b64decode, bytes_array, bytes_items, cast_numbers,
                                   check_input, decode_images, flatten_data, image_batch, request_inputs,
                                   sniff_format, task_parameters, text_or_base64)

def parse_tfs(body, spec, limits):
  """`{"instances": [...]}` (rows) or `{"inputs": ...}` (columns) -> (batch, kind, columnar, extras). Inputs
  beside the images are per request, so they come in the columnar form: {"inputs": {"images": ..., NAME: ...}}."""
  if ("instances" in body) == ("inputs" in body):
    raise RequestError(400, "body needs exactly one of 'instances' (row form) or 'inputs' (columnar form)")
  if "instances" in body:
    rows = body["instances"]
    if not isinstance(rows, list):
      raise RequestError(400, "'instances' must be a list")
    if len(rows) > limits.max_images:
      raise RequestError(400, f"{len(rows)} instances, more than the limit of {limits.max_images}")
    rows = [_unwrap_named(r, spec)[INPUT_NAME] for r in rows]
    if any(_is_b64(r) for r in rows) and not all(_is_b64(r) for r in rows):
      raise RequestError(400, "'instances' mixes {\"b64\": ...} images with numeric arrays")
    images, kind = _tfs_images(rows, spec, limits)
    return images, kind, False, request_inputs({INPUT_NAME: images}, spec, limits, body.get("parameters"))[2]
  named = _unwrap_named(body["inputs"], spec, columnar=True)
  tensors = {n: _tfs_extra(n, v, spec, limits) for n, v in named.items() if n != INPUT_NAME}
  images, kind = None, "uint8"
  if INPUT_NAME in named:
    value = named[INPUT_NAME]
    images, kind = _tfs_images([value] if _is_b64(value) else value, spec, limits)
    tensors[INPUT_NAME] = images
  return images, kind, True, request_inputs(tensors, spec, limits, body.get("parameters"))[2]


def _tfs_images(value, spec, limits):
  """TF-Serving's images: a list of {"b64": ...} encoded images, or nested numbers -> (batch, kind)."""
  if isinstance(value, list) and value and all(_is_b64(v) for v in value):
    if len(value) > limits.max_images:
      raise RequestError(400, f"{len(value)} images, more than the limit of {limits.max_images}")
    return decode_images([b64decode(INPUT_NAME, v["b64"]) for v in value], spec, limits), "uint8"
  return _numeric(value, spec, limits)


def _tfs_extra(name, value, spec, limits):
  """A columnar input beside the images -> array of its datatype (BYTES: strings, or {"b64": ...})."""
  datatype = next(i.datatype for i in spec.inputs if i.name == name)
  if datatype == "BYTES":
    items = flatten_data(name, value)
    if not all(isinstance(v, str) or _is_b64(v) for v in items):
      raise RequestError(400, f"input '{name}': BYTES values must be strings or {{\"b64\": ...}}")
    shape = list(np.array(value, dtype=object).shape)  # lists of strings/dicts: their nesting
    check_input(name, datatype, shape, spec, limits)
    return bytes_array([b64decode(name, v["b64"]) if _is_b64(v) else v.encode() for v in items], shape)
  try:
    arr = np.array(value)
  except (ValueError, OverflowError) as e:
    raise RequestError(400, f"input '{name}': not a regular array: {e}")
  check_input(name, datatype, list(arr.shape), spec, limits)
  return cast_numbers(name, arr, np.dtype(DTYPES[datatype]))


def _is_b64(v):
  return isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str)


def _unwrap_named(v, spec, columnar=False):
  """TF-Serving's named inputs ({"images": value, ...}) or one unnamed value (the images) -> {name: value}."""
  if not isinstance(v, dict) or _is_b64(v):
    return {INPUT_NAME: v}
  names = [INPUT_NAME, *(i.name for i in spec.inputs)] if columnar else [INPUT_NAME]
  if (INPUT_NAME not in v and not (columnar and spec.images_optional)) or not set(v) <= set(names):
    beside = " (inputs beside the images go in the columnar form, {\"inputs\": {...}})" if spec.inputs else ""
    raise RequestError(400, f"unknown input(s) {sorted(set(v) - set(names)) or sorted(v)}; this model takes "
                            f"{names}, one named '{INPUT_NAME}'{beside}")
  return dict(v)


def _numeric(value, spec, limits):
  """Nested numbers [N, H, W, C]: integers are uint8 pixels, floats are normalised pixels."""
  try:
    arr = np.array(value)
  except (ValueError, OverflowError) as e:
    raise RequestError(400, f"input '{INPUT_NAME}': not a regular numeric array: {e}")
  if arr.dtype.kind in "iu" or (arr.size == 0 and arr.dtype.kind == "f"):
    arr = cast_numbers(INPUT_NAME, arr, np.dtype(np.uint8))
  elif arr.dtype.kind == "f":
    arr = cast_numbers(INPUT_NAME, arr, np.dtype(np.float32))
  else:
    raise RequestError(400, f"input '{INPUT_NAME}': values must be numbers (integers 0-255 or normalised floats)")
  return image_batch(INPUT_NAME, arr, spec, limits)


def tfs_json(name, values):
  """An output as TF-Serving writes it: numbers as nested lists; BYTES as strings, or {"b64": ...} objects when
  the name ends in "_bytes" (TF-Serving's rule) or the elements are not all UTF-8 text."""
  if values.dtype != object:
    return values.tolist()
  items = bytes_items(values)
  strings, encoded = text_or_base64(items)
  if name.endswith("_bytes") and not encoded:
    strings, encoded = [base64.b64encode(b).decode("ascii") for b in items], True
  return bytes_array([{"b64": v} for v in strings] if encoded else strings, values.shape).tolist()


def tfs_response(tensors, names, columnar):
  """TF-Serving's reply of the outputs `names` (served.tfs_outputs) of a batch: one name answers its values per
  row ({"predictions": [...]}) or as one column ({"outputs": [...]}); several answer a {name: value} object per
  row, or {"outputs": {name: values}}, as TF-Serving does for a signature with several outputs. Of `names`, those
  the answer holds (an open-vocabulary model answers logits only for a request with labels)."""
  names = [n for n in names if n in tensors] or sorted(tensors)
  if len(names) == 1:
    values = tfs_json(names[0], tensors[names[0]])
    return {"outputs": values} if columnar else {"predictions": values}
  if columnar:
    return {"outputs": {n: tfs_json(n, tensors[n]) for n in names}}
  rows = {n: tfs_json(n, tensors[n]) for n in names}
  return {"predictions": [{n: rows[n][i] for n in names} for i in range(len(rows[names[0]]))]}


def upload_extras(fields, spec, limits):
  """An upload's query/form fields {name: [strings]} -> {input: 1-D array} for the inputs beside the images
  (BYTES: each value's UTF-8; numbers parsed) and the task's parameters (the field's last value); other fields
  are not inputs and are left alone."""
  extras = task_parameters({n: fields[n][-1] for n in spec.parameters if n in fields}, spec)
  for i in spec.inputs:
    if i.name not in fields:
      continue
    values = fields[i.name]
    count = check_input(i.name, i.datatype, [len(values)], spec, limits)
    if i.datatype == "BYTES":
      extras[i.name] = bytes_array([v.encode() for v in values], [count])
      continue
    try:
      arr = np.array([float(v) for v in values])
    except ValueError as e:
      raise RequestError(400, f"input '{i.name}': {e}")
    extras[i.name] = cast_numbers(i.name, arr, np.dtype(DTYPES[i.datatype]))
  missing = [i.name for i in spec.inputs if i.required and i.name not in extras]
  if missing:
    raise RequestError(400, f"this model also needs the input(s) {missing}: add them as fields, e.g. "
                            f"?{missing[0]}=VALUE&{missing[0]}=VALUE")
  return extras


def hf_request(body, limits):
  """(image bytes, parameters) of Hugging Face's pipeline JSON, {"inputs": base64 image, "parameters": {...}}, or
  None for another body (TF-Serving's "inputs" is a list or an object, never a string)."""
  if not (isinstance(body, dict) and isinstance(body.get("inputs"), str)):
    return None
  unknown = sorted(set(body) - {"inputs", "parameters"})
  if unknown:
    raise RequestError(400, f"unknown key(s) {unknown} beside 'inputs' (a base64 image) and 'parameters'")
  parameters = body.get("parameters") or {}
  if not isinstance(parameters, dict):
    raise RequestError(400, "'parameters' must be an object, e.g. {\"candidate_labels\": [\"cat\", \"dog\"]}")
  for key, value in parameters.items():
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items):
      raise RequestError(400, f"parameter {key!r} must be a string, an integer or a list of strings")
  raw = b64decode("inputs", body["inputs"])
  if len(raw) > limits.max_body_bytes:
    raise RequestError(413, f"image of {len(raw)} bytes is over the limit of {limits.max_body_bytes}")
  return raw, parameters


def negotiate(accept, offers):
  """The media type of `offers` (the server's, preferred first) that an HTTP `Accept` header likes best: the
  highest q of the most specific range matching it ("image/png" over "image/*" over "*/*"); ties go to the
  server's order; no header: the first offer. None when the client accepts none of them (406)."""
  if not accept or not accept.strip():
    return offers[0]
  ranges = []
  for part in accept.split(","):
    kind, *params = [p.strip() for p in part.split(";")]
    q = 1.0
    for p in params:
      key, _, value = p.partition("=")
      if key.strip().lower() == "q":
        try:
          q = float(value)
        except ValueError:
          q = 0.0  # a malformed weight accepts nothing rather than everything
    if kind:
      ranges.append((kind.lower(), q))

  def quality(offer):
    major = offer.split("/")[0]
    for pattern in (offer, f"{major}/*", "*/*"):  # the most specific range that names the offer decides
      found = [q for kind, q in ranges if kind == pattern]
      if found:
        return max(found)
    return 0.0
  best = max(offers, key=lambda o: (quality(o), -offers.index(o)))
  return best if quality(best) > 0 else None


def is_upload(content_type, body):
  """Whether a :predict body is an image upload (multipart, octet-stream, or an encoded image whatever its
  Content-Type says: `curl --data-binary @x.png` sends form-urlencoded) rather than TF-Serving JSON."""
  return content_type in ("multipart/form-data", "application/octet-stream") or content_type.startswith("image/") \
      or sniff_format(body) is not None  # octet-stream is never JSON: an empty or unknown one gets an image error
