"""The conversion engine shared by every family: imgrec parameter names -> source keys, values -> imgrec layout.

A family module gives, for one source layout, `rule(name, target) -> Rule`: the source keys an imgrec
parameter is made from and the function that makes it (a transpose, a concatenation of q/k/v, ...).
`convert` applies the rules to every parameter of the target model and reports each one:

  loaded        made from the source, with the target's shape
  missing       a source key it needs is not in the file (only a head may be missing: `optional`)
  wrong shape   made, but not of the target's shape (another width or architecture)
  unexpected    a source key no rule used
  ignored       a source key the zoo model has no use for, named by the family (Hugging Face ViT's pooler)

`convert` never loads partially: anything but "loaded" (and optional "missing") is a UserError listing the
first offenders; the report is returned (and saved by the caller) either way.
"""
import re
from typing import Callable, NamedTuple

import numpy as np
import tqdm

from imgrec.errors import UserError

BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}  # BatchNorm leaves in torch
LN = {"scale": "weight", "bias": "bias"}


class Rule(NamedTuple):
  keys: tuple
  fn: Callable = None  # (*arrays) -> array; None: the one array as it is


def same(key):
  return Rule((key,))


def conv(key):
  """torch conv weight OIHW (depthwise: C,1,kh,kw) -> HWIO."""
  return Rule((key,), lambda w: np.transpose(w, (2, 3, 1, 0)))


def linear(key):
  """torch Linear weight (out, in) -> Dense kernel (in, out)."""
  return Rule((key,), lambda w: np.ascontiguousarray(np.transpose(w)))


def torch_leaf(prefix, leaf, ndim):
  """The torch key and layout of an imgrec leaf of module `prefix` (kernel, bias, scale, mean, var)."""
  if leaf == "kernel":
    return (conv if ndim == 4 else linear)(prefix + ".weight")
  return same(f"{prefix}.{BN[leaf]}")


def split(name):
  """"params/a/b/kernel" -> ("a/b", "kernel"); the collection (params, batch_stats) is dropped."""
  return name.split("/", 1)[1].rpartition("/")[::2]


def convert(source, target, rule, what, optional=(), emit=None, ignored=None):
  """Fills every name of `target` ({imgrec name: shape}) from `source` (formats.Source) by `rule(name, target)`.

  `emit(name, array)` receives each loaded value (so a writer can stream them to disk); without it they are
  collected and returned. Returns (values or None, rows); raises UserError unless every non-`optional`
  parameter loaded and every source key was used. `what` names the layout in messages ("timm ViT").
  """
  values, rows, used = {}, [], set()
  emit = emit or values.__setitem__
  total = sum(4 * int(np.prod(s)) for s in target.values())
  with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc="import", leave=False) as bar:
    for name, shape in target.items():
      bar.update(4 * int(np.prod(shape)))
      _convert_one(source, name, shape, rule(name, target), rows, used, emit)
  rows += [{"name": None, "status": "ignored" if ignored and re.search(ignored, k) else "unexpected", "source": [k],
            "source_shape": [list(source.shapes[k])]} for k in source.shapes if k not in used]
  check(rows, what, source.path, optional)
  return (values or None), rows


def _convert_one(source, name, shape, r, rows, used, emit):
  """Makes one parameter by its rule, emits it if it has the target's shape, and appends its report row."""
  row = {"name": name, "shape": list(shape), "source": list(r.keys)}
  if any(k not in source.shapes for k in r.keys):
    rows.append(dict(row, status="missing"))
    return
  used.update(r.keys)
  arrays = [source.get(k) for k in r.keys]
  row["source_shape"] = [list(np.shape(a)) for a in arrays]
  try:
    value = arrays[0] if r.fn is None else r.fn(*arrays)
  except ValueError:  # a reshape that does not fit: the source has another shape
    value = None
  if value is None or tuple(np.shape(value)) != tuple(shape):
    rows.append(dict(row, status="wrong shape"))
    return
  emit(name, np.ascontiguousarray(value, dtype=np.float32))
  rows.append(dict(row, status="loaded"))


def counts(rows):
  out = {}
  for r in rows:
    out[r["status"]] = out.get(r["status"], 0) + 1
  return out


def check(rows, what, path, optional=()):
  """UserError naming the first parameters that did not load (and the first unused source keys)."""
  bad = [r for r in rows if r["status"] not in ("loaded", "ignored")
         and not (r["status"] == "missing" and r["name"] in optional)]
  if not bad:
    return
  lines = []
  for status in ("missing", "wrong shape", "unexpected"):
    sel = [r for r in bad if r["status"] == status]
    if not sel:
      continue
    if status == "unexpected":
      shown = [f"{r['source'][0]} {tuple(r['source_shape'][0])}" for r in sel[:6]]
    elif status == "missing":
      shown = [f"{r['name']} <- {', '.join(k for k in r['source'])}" for r in sel[:4]]
    else:
      shown = [f"{r['name']} {tuple(r['shape'])} <- {r['source'][0]} {tuple(r['source_shape'][0])}" for r in sel[:4]]
    lines.append(f"{len(sel)} {status} ({'; '.join(shown)}{', ...' if len(sel) > len(shown) else ''})")
  raise UserError(f"{path} does not map onto the {what} layout imgrec knows: {' | '.join(lines)}; is it another "
                  "architecture, or a variant imgrec does not import? (--model names the architecture)")


def table(rows):
  """Counts per status, then each parameter that did not load: what `imgrec import` prints."""
  lines = [f"  {status:<12} {n}" for status, n in counts(rows).items()]
  for r in rows:
    if r["status"] != "loaded":
      lines.append(f"  {r['status']:<12} {r['name'] or r['source'][0]}")
  return "\n".join(lines)
