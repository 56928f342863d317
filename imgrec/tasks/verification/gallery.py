"""The 1:N gallery: enrolled identities' embeddings, exact cosine search, persisted atomically beside the run.

  g = Gallery.open(path, dim)       the gallery file at `path` (W/gallery.npz), or an empty one
  g.enroll(identity, embeddings)    adds rows [n, D] under a name (several images per identity are kept apart)
  g.search(queries, k)              per query the k best identities [(identity, score)], an identity's score
                                    being its best row's cosine
  g.delete(identity)                removes every row of it
Every change is saved at once (files.write_atomic: a crash leaves the old file or the new one), and every use
first reads the file again if it changed since this gallery last read or wrote it (another server, or another
model served from the same run), so no change is made to a stale copy and saved over another's. The file is an
.npz of "identities" (unicode strings) and "embeddings" (float32, L2-normalised): embeddings only, no images, and
read with allow_pickle=False.

Search is exact, one BLAS matrix product in numpy: with 100,000 x 128 rows it is a few milliseconds on one CPU
core (scripts/bench_verification.py measures it), the same work FAISS's exact IndexFlatIP does, so FAISS would
add a dependency without a gain at this size; JAX would recompile for every gallery size (it changes with each
enroll). An approximate index (FAISS IVF/HNSW) pays from millions of rows.
"""
import io
import os
import threading
import unicodedata

import numpy as np

from imgrec import files
from imgrec.errors import UserError

MAX_IDENTITY = 200  # characters of an identity name


def check_identity(identity):
  """The identity name, stripped; an empty, over-long or control-character name is a UserError."""
  name = identity.strip() if isinstance(identity, str) else ""
  if not name:
    raise UserError("an enrollment needs an identity: a non-empty name (the `identity` field)")
  if len(name) > MAX_IDENTITY or any(unicodedata.category(c).startswith("C") for c in name):
    raise UserError(f"identity names are at most {MAX_IDENTITY} printable characters; got {name[:40]!r}")
  return name


def _stamp(path):
  """What tells one version of a file from another (None: no file, or no path)."""
  try:
    st = os.stat(path) if path else None
  except FileNotFoundError:
    return None
  return st and (st.st_ino, st.st_mtime_ns, st.st_size)


def _normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Gallery:
  """Identities and their embeddings in one growing buffer (doubling, so n enrolls cost O(n) copies)."""

  def __init__(self, dim, path=None):
    self.dim, self.path = int(dim), path
    self._lock = threading.Lock()
    self._clear()

  def _clear(self):
    self._rows = np.zeros((0, self.dim), np.float32)
    self._owner = np.zeros(0, np.int64)  # index into _names per row
    self._names, self._index = [], {}    # identity -> its number
    self._count = {}                     # identity -> its rows
    self._n = 0
    self._version = None                 # _stamp of the file this gallery last read or wrote

  @classmethod
  def open(cls, path, dim):
    """The gallery saved at `path`, or an empty one that will be saved there."""
    g = cls(dim, path)
    g._load()
    return g

  def _load(self):
    """Reads the file (none: an empty gallery); one that is not a gallery of this dimension changes nothing."""
    version = _stamp(self.path)
    names, rows = np.zeros(0, str), np.zeros((0, self.dim), np.float32)
    if version is not None:
      try:
        with np.load(self.path, allow_pickle=False) as f:
          names, rows = f["identities"], f["embeddings"]
      except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{self.path} is not a gallery file ({e}); move it away to start an empty gallery") from None
      if rows.ndim != 2 or rows.shape[1] != self.dim or len(names) != len(rows):
        raise UserError(f"{self.path} holds {rows.shape} embeddings for {len(names)} names, but this model's "
                        f"embeddings have {self.dim} values: it belongs to another model; move it away")
    self._clear()
    for name in np.unique(names):
      self._add(str(name), rows[names == name])
    self._version = version

  def _sync(self):
    """Under the lock, before any use: reads the file again when it changed since this gallery last read or
    wrote it (another process enrolled or deleted), so a change is never made to a stale copy and saved over it."""
    if self.path and _stamp(self.path) != self._version:
      self._load()

  def __len__(self):
    return self._n

  @property
  def identities(self):
    return sorted(self._count)

  def counts(self):
    """{identity: its rows}, by name."""
    with self._lock:
      self._sync()
      return dict(sorted(self._count.items()))

  def _add(self, name, rows):
    if name not in self._index:
      self._index[name] = len(self._names)
      self._names.append(name)
    need = self._n + len(rows)
    if need > len(self._rows):
      cap = max(need, 2 * len(self._rows), 64)
      self._rows = np.concatenate([self._rows[:self._n], np.zeros((cap - self._n, self.dim), np.float32)])
      self._owner = np.concatenate([self._owner[:self._n], np.zeros(cap - self._n, np.int64)])
    self._rows[self._n:need] = rows
    self._owner[self._n:need] = self._index[name]
    self._n = need
    self._count[name] = self._count.get(name, 0) + len(rows)

  def enroll(self, identity, embeddings, save=True):
    """Adds `embeddings` [n, D] (or [D]) under `identity`; returns the identity's row count."""
    name = check_identity(identity)
    rows = _normalize(np.atleast_2d(embeddings))
    if rows.shape[1] != self.dim or not len(rows):
      raise UserError(f"an enrollment gives {rows.shape[1]}-value embeddings; this gallery holds {self.dim}")
    with self._lock:
      self._sync()
      self._add(name, rows)
      if save:
        self.save()
      return self._count[name]

  def delete(self, identity):
    """Removes every row of `identity`; returns how many. An identity not enrolled is a UserError."""
    name = check_identity(identity)
    with self._lock:
      self._sync()
      removed = self._count.pop(name, 0)
      if not removed:
        raise UserError(f"identity {name!r} is not in the gallery (nothing was deleted)")
      keep = self._owner[:self._n] != self._index[name]
      n = self._n - removed
      self._rows[:n], self._owner[:n] = self._rows[:self._n][keep], self._owner[:self._n][keep]
      self._n = n
      self.save()
      return removed

  def search(self, queries, k=5):
    """Per query [Q, D] the k (at most the gallery's identities) best [(identity, cosine)], best first."""
    q = _normalize(np.atleast_2d(queries))
    if q.shape[1] != self.dim:
      raise UserError(f"search embeddings have {q.shape[1]} values; this gallery holds {self.dim}")
    with self._lock:
      self._sync()
      rows, owner = self._rows[:self._n], self._owner[:self._n]
      scores = q @ rows.T  # [Q, N]
      return [self._top(s, owner, k) for s in scores]

  def _top(self, scores, owner, k):
    """The k best identities of one query's row scores: the best rows first (cheap); the exact per-identity
    maximum only when those rows hold fewer than k identities."""
    if not len(scores):
      return []
    m = min(len(scores), 4 * k)
    best = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(len(scores))
    best = best[np.argsort(-scores[best], kind="stable")]
    out, seen = [], set()
    for r in best:
      if owner[r] not in seen:
        seen.add(owner[r])
        out.append((self._names[owner[r]], float(scores[r])))
        if len(out) == k:
          return out
    if m == len(scores):
      return out
    top = np.full(len(self._names), -np.inf)
    np.maximum.at(top, owner, scores)
    order = np.argsort(-top, kind="stable")[:k]
    return [(self._names[i], float(top[i])) for i in order if np.isfinite(top[i])]

  def save(self):
    """Writes the gallery to its path atomically (no path: nothing to do)."""
    if not self.path:
      return
    buf = io.BytesIO()
    names = np.array([self._names[i] for i in self._owner[:self._n]], dtype=str).astype("U")
    np.savez(buf, identities=names.reshape(-1), embeddings=self._rows[:self._n])
    files.write_atomic(self.path, buf.getvalue())
    self._version = _stamp(self.path)
