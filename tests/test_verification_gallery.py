"""The 1:N gallery (imgrec/tasks/verification/gallery.py): exact search against brute force, enroll / delete,
atomic persistence holding embeddings only, and clear errors."""
import os

import numpy as np
import pytest

from imgrec.errors import UserError
from imgrec.tasks.verification import gallery


def _brute(rows, owners, q, k):
  rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  q = q / np.linalg.norm(q)
  best = {}
  for r, o in zip(rows @ q, owners):
    best[o] = max(best.get(o, -np.inf), r)
  return sorted(best.items(), key=lambda t: -t[1])[:k]


def test_search_is_exact_with_several_rows_per_identity(tmp_path):
  rng = np.random.default_rng(0)
  g = gallery.Gallery.open(str(tmp_path / "g.npz"), 16)
  rows, owners = [], []
  for i in range(50):
    e = rng.normal(size=(1 + i % 4, 16))
    g.enroll(f"id{i}", e, save=False)
    rows.append(e)
    owners += [f"id{i}"] * len(e)
  rows = np.concatenate(rows)
  for q in rng.normal(size=(5, 16)):
    got = g.search(q, k=7)[0]
    want = _brute(rows, owners, q, 7)
    assert [n for n, _ in got] == [n for n, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
  # one identity owning every top row: the per-identity maximum still finds k identities
  v = rng.normal(size=16)
  crowd = v + rng.normal(size=(40, 16)) * 1e-3
  g.enroll("crowd", crowd, save=False)
  got = g.search(v, k=5)[0]
  want = _brute(np.concatenate([rows, crowd]), owners + ["crowd"] * 40, v, 5)
  assert got[0][0] == "crowd" and [n for n, _ in got] == [n for n, _ in want]


def test_enroll_delete_and_persist_atomically(tmp_path, monkeypatch):
  path = str(tmp_path / "gallery.npz")
  g = gallery.Gallery.open(path, 8)
  assert g.enroll("  Ada ", np.ones((2, 8))) == 2 and g.enroll("Ada", np.ones(8)) == 3
  g.enroll("Bob", -np.ones((1, 8)))
  back = gallery.Gallery.open(path, 8)
  assert len(back) == 4 and back.identities == ["Ada", "Bob"]
  with np.load(path, allow_pickle=False) as f:  # embeddings and names only, no pickled objects
    assert set(f.files) == {"identities", "embeddings"} and f["embeddings"].dtype == np.float32
  assert back.search(np.ones(8), k=1)[0][0][0] == "Ada"
  assert back.delete("Ada") == 3 and gallery.Gallery.open(path, 8).identities == ["Bob"]
  with pytest.raises(UserError, match="not in the gallery"):
    back.delete("Ada")
  before = open(path, "rb").read()

  def fail(src, dst):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(UserError, match="cannot write"):
    back.enroll("Cy", np.ones(8))
  assert open(path, "rb").read() == before  # the old gallery is intact
  assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_bad_input_is_one_clear_error(tmp_path):
  g = gallery.Gallery(4)
  for bad in ("", "   ", None, "a\nb", "x" * 300):
    with pytest.raises(UserError, match="identity"):
      g.enroll(bad, np.ones(4))
  with pytest.raises(UserError, match="4"):
    g.enroll("a", np.ones(5))
  with pytest.raises(UserError, match="values"):
    g.search(np.ones(3))
  assert g.search(np.ones(4)) == [[]]
  other = str(tmp_path / "other.npz")
  gallery.Gallery.open(other, 6).enroll("z", np.ones(6))
  with pytest.raises(UserError, match="another model"):
    gallery.Gallery.open(other, 4)
  pickled = str(tmp_path / "pickled.npz")
  np.savez(pickled, identities=np.array([{"a": 1}], dtype=object), embeddings=np.ones((1, 4), np.float32))
  with pytest.raises(UserError, match="not a gallery file"):
    gallery.Gallery.open(pickled, 4)


def test_a_gallery_reads_the_file_again_when_another_wrote_it(tmp_path):
  """Two galleries on one file (two servers on one run): each change is made to what the file holds, so
  neither saves its stale copy over the other's change."""
  path = str(tmp_path / "gallery.npz")
  a, b = gallery.Gallery.open(path, 4), gallery.Gallery.open(path, 4)
  a.enroll("Ada", np.eye(4)[:2])
  assert b.enroll("Bob", np.eye(4)[2]) == 1 and b.counts() == {"Ada": 2, "Bob": 1}
  assert a.delete("Bob") == 1
  assert b.search(np.eye(4)[2], k=5)[0][0][0] == "Ada" and len(b) == 2
  assert gallery.Gallery.open(path, 4).counts() == {"Ada": 2}
  with open(path, "wb") as f:  # damaged behind both: a clear error, and the gallery in memory is kept
    f.write(b"not a gallery")
  with pytest.raises(UserError, match="is not a gallery file"):
    a.search(np.eye(4)[0])
  assert len(a) == 2
