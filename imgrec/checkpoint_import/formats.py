"""Checkpoint files: which format a file is (read from its bytes, not its name), and one reader per format.

  .npz          big_vision / ViT-repository layout, "/"-joined keys; read with allow_pickle=False (a pickled
                object in it is refused, never loaded); "FILE.npz:img" picks a two-tower file's image tower; a whole
                SigLIP / LiT file (img/, txt/, t) is read whole
  .safetensors  timm / Hugging Face; a folder with config.json + model.safetensors gives the config too
  .pth          a torch state_dict (torchvision); needs torch, and is read with weights_only=True

A `Source` holds the tensors lazily (`get(key)` reads one), so a large file is never all in memory twice.
"""
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from safetensors import SafetensorError, safe_open

from imgrec.errors import UserError

PREFIXES = ("opt/target/", "params/")  # the ViT repository's and big_vision's roots of the parameter tree
TOWERS = ("img", "txt")  # big_vision's two-tower (SigLIP, LiT) files


class Source(NamedTuple):
  path: str
  format: str                      # "npz" | "safetensors" | "pth"
  shapes: dict                     # key -> shape, for every tensor
  get: Callable[[str], np.ndarray]  # key -> array (read on demand)
  config: Optional[dict] = None    # the file's own config.json (timm / Hugging Face), if any
  extra: Any = None                # preprocessor_config.json of a Hugging Face folder, if any


def split_tower(spec):
  """"FILE.npz:img" -> ("FILE.npz", "img"); anything else -> (spec, None)."""
  path, sep, tower = spec.rpartition(":")
  if sep and tower and not os.path.exists(spec) and os.path.exists(path):
    return path, tower
  return spec, None


def detect(path):
  """'npz', 'safetensors', 'pth' or 'folder' for `path`, from its bytes; UserError when it is none of them."""
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "model.safetensors")):
      return "folder"
    raise UserError(f"{path} is a folder without model.safetensors: give a timm / Hugging Face model folder "
                    "(config.json + model.safetensors) or a checkpoint file")
  if not os.path.isfile(path):
    raise UserError(f"checkpoint {path} not found")
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":  # a zip: numpy's .npz, or torch.save's format
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
      raise UserError(f"{path} is a damaged or truncated zip ({e}); download it again") from None
    if any(n.endswith("data.pkl") for n in names):
      return "pth"
    if names and all(n.endswith(".npy") for n in names):
      return "npz"
    raise UserError(f"{path} is a zip of neither a .npz nor a torch checkpoint (it has e.g. {names[:3]})")
  if head[:1] == b"\x80":  # a bare pickle: torch.save's legacy format
    return "pth"
  if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
    return "safetensors"
  raise UserError(f"{path}: unknown checkpoint format (not .npz, .safetensors or a torch .pth); "
                  "imgrec imports big_vision/ViT .npz, timm/Hugging Face safetensors and torchvision .pth files")


def read(spec):
  """The `Source` of a checkpoint spec (file, "FILE.npz:tower", or model folder)."""
  path, tower = split_tower(spec)
  kind = detect(path)
  if tower and kind != "npz":
    raise UserError(f"{spec}: ':{tower}' picks a tower of a big_vision .npz; {path} is a {kind} checkpoint")
  if kind == "npz":
    return read_npz(path, tower)
  if kind == "safetensors":
    return read_safetensors(path, _json_beside(path, "config.json"))
  if kind == "folder":
    return read_safetensors(os.path.join(path, "model.safetensors"), _json_beside(path, "config.json"),
                            _json_beside(path, "preprocessor_config.json"))
  return read_pth(path)


def _json_beside(path, name):
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  found = os.path.join(folder, name)
  if not os.path.isfile(found):
    return None
  try:
    with open(found) as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f"{found} is not valid JSON ({e}); fix or remove it") from None


def read_npz(path, tower=None):
  """A big_vision / ViT .npz: keys with their common root ("params/", "opt/target/") and the tower removed."""
  try:
    f = np.load(path, allow_pickle=False)
    keys = list(f.files)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f"cannot read {path} as .npz ({e}); is it truncated?") from None
  prefix = next((p for p in PREFIXES if keys and all(k.startswith(p) for k in keys)), "")
  names = {k[len(prefix):]: k for k in keys}
  towers = sorted({k.split("/", 1)[0] for k in names} & set(TOWERS))
  if tower:
    if tower not in towers:
      raise UserError(f"{path} has no tower {tower!r} (it has {', '.join(towers) or 'none'}: keys such as "
                      f"{', '.join(list(names)[:3])})")
    names = {k[len(tower) + 1:]: v for k, v in names.items() if k.startswith(tower + "/")}
  elif towers and "img" in towers and "t" not in names:  # with its temperature t: a whole two-tower model
    raise UserError(f"{path} is a two-tower file ({', '.join(towers)}): name the image tower, {path}:img")

  last = {}  # 3 arrays kept: in scanned big_vision files every block reads q, k, v slices of the same stacked arrays

  def get(key):
    if key in last:
      return last[key]
    try:
      if len(last) >= 3:
        last.pop(next(iter(last)))
      last[key] = f[names[key]]
      return last[key]
    except ValueError as e:  # numpy refuses object arrays without allow_pickle
      raise UserError(f"{path}: array {names[key]!r} holds pickled Python objects; imgrec never unpickles a "
                      f".npz (it could run code): save plain numeric arrays ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
      raise UserError(f"{path}: array {names[key]!r} cannot be read ({type(e).__name__}: {e}); is the file "
                      "truncated?") from None
  shapes = {}
  for key, full in names.items():
    shapes[key] = _npy_shape(f, full, path)
  return Source(path, "npz", shapes, get)


def _npy_shape(f, name, path):
  """The shape of one .npy member, from its header only (no data read); object arrays are refused here."""
  try:
    with f.zip.open(name + ".npy") as member:
      version = np.lib.format.read_magic(member)
      header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, dtype = header(member)
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise UserError(f"{path}: array {name!r} cannot be read ({e}); is the file truncated?") from None
  if dtype.hasobject:
    raise UserError(f"{path}: array {name!r} holds pickled Python objects; imgrec never unpickles a .npz "
                    "(allow_pickle stays off): save plain numeric arrays")
  return tuple(shape)


def read_safetensors(path, config=None, extra=None):
  """A .safetensors file through the safetensors package's numpy API (bf16 comes back as ml_dtypes bfloat16)."""
  size = os.path.getsize(path)
  with open(path, "rb") as fh:
    n = struct.unpack("<Q", fh.read(8))[0] if size >= 8 else size + 1
    try:  # the header says where every tensor ends: a file shorter than that was cut
      header = json.loads(fh.read(n)) if n + 8 <= size else None
      end = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, AttributeError):
      header, end = None, size + 1
  if header is None or end > size:
    raise UserError(f"{path} is truncated or damaged ({size} bytes; its header says {end if header else n + 8}); "
                    "download it again")
  try:
    handle = safe_open(path, framework="numpy")
    shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f"cannot read {path} as safetensors ({e}); is it truncated?") from None

  def get(key):
    try:
      return handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
      raise UserError(f"{path}: tensor {key!r} cannot be read ({e}); is the file truncated?") from None
  return Source(path, "safetensors", shapes, get, config, extra)


def read_pth(path):
  """A torch state_dict (needs torch)."""
  try:
    import torch
  except ImportError:
    raise UserError("reading a .pth file needs torch: pip install 'imgrec[torch]' (CPU wheel is enough)") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # weights_only refuses classes: a whole pickled model (its message: pages)
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    raise UserError(f"{path} pickles Python objects{' (' + found[1] + ')' if found else ''}, not a state_dict of "
                    "tensors; imgrec never unpickles code: in Python, torch.save(model.state_dict(), 'weights.pth') "
                    "and import that") from None
  except Exception as e:  # torch raises many types for bad files
    raise UserError(f"cannot read {path} as a torch state_dict: {type(e).__name__}: {e}") from None
  if isinstance(sd, dict) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, dict) or not all(hasattr(v, "detach") for v in sd.values()):
    raise UserError(f"{path} holds no state_dict (a dict of tensors); save one with torch.save(model.state_dict())")
  sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  return Source(path, "pth", {k: tuple(v.shape) for k, v in sd.items()},
                lambda k: sd[k].detach().float().cpu().numpy())


def from_arrays(arrays, name="<arrays>", config=None):
  """A `Source` over an in-memory {key: array} (tests, notebooks)."""
  return Source(name, "arrays", {k: tuple(np.shape(v)) for k, v in arrays.items()}, lambda k: np.asarray(arrays[k]),
                config)
