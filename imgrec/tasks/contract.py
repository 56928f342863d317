"""What every task shares: the description of a served output, and the one line format of an evaluation record.
Task modules import this (never the tasks package, which imports them)."""
from typing import NamedTuple


class Output(NamedTuple):
  """One output of a task's predict: what the server's metadata, its replies and an export's meta.json say.
  `shape` is per example; a string in it is a size the model or data decides, filled in by the task's
  output_sizes(model, info) (e.g. "K" classes, "H"/"W" the input's height and width)."""
  name: str
  datatype: str      # OIP v2 datatype: "FP32", "INT32", "UINT8", "BYTES", ...
  shape: tuple       # per example, e.g. ("K",) or ("K", 4) or ()
  tfs: bool = True   # TF-Serving :predict answers with it


class Encoder(NamedTuple):
  """A pure function of a model beside its predict, which the server compiles and an export serialises (batch
  size symbolic): e.g. a two-tower model's text tower, token ids -> text embeddings."""
  fn: object         # fn(variables, x) -> array [B, ...]
  shape: tuple       # x's per-example shape
  dtype: str         # x's numpy dtype name, e.g. "int32"


def resolve(outputs, sizes):
  """[(name, datatype, shape)] with every named size of `outputs` filled in from `sizes` ({"K": 10, ...})."""
  return [(o.name, o.datatype, tuple(sizes.get(d, d) if isinstance(d, str) else d for d in o.shape)) for o in outputs]


def line(record, keys):
  """"split k1 v1, k2 v2, ..., N examples" of an evaluation record, over the task's `keys` (its LINE)."""
  values = ", ".join(f"{k} {record[k]:.4f}" for k in keys)
  examples = f", {record['examples']} examples" if "examples" in record else ""
  return f"{record['split']} {values}{examples}"
