"""Verification pairs: LFW's pairs.txt format, read and written, and pairs drawn for any set of identities.

The format (LFW View 2, and View 1's pairsDevTrain/DevTest with a one-number header):
  line 1          "FOLDS N" (or "N": one fold): N matched then N mismatched pairs per fold, folds in order
  matched         "name i j"            images i and j (1-based) of identity `name`
  mismatched      "name1 i name2 j"     image i of name1 and image j of name2
Image i of an identity is the i-th of its image files in sorted order (LFW's name_0001.jpg ... sort so).

`Pairs` holds them as arrays: first/second (name, 1-based index) per pair, same (bool) and fold (int).
insightface's .bin pair files are Python pickles, which can run code when loaded: they are refused, never read.
"""
import dataclasses

import numpy as np

from imgrec.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle")


@dataclasses.dataclass
class Pairs:
  names1: list     # identity of each pair's first image
  index1: np.ndarray  # 1-based image number within that identity
  names2: list
  index2: np.ndarray
  same: np.ndarray    # bool
  fold: np.ndarray    # int

  def __len__(self):
    return len(self.same)


def _refuse_pickle(path, head):
  if path.lower().endswith(PICKLE_SUFFIXES) or head[:1] == b"\x80":
    raise UserError(f"{path} looks like a pickled pair file (insightface's .bin format); imgrec never unpickles "
                    "(a pickle can run code when loaded): give an LFW-style pairs.txt with the images in a folder "
                    "instead (verification.pairs and verification.pairs_root)")


def read(path):
  """The Pairs of a pairs.txt file; any line that breaks the format is a UserError naming it."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"cannot read the pairs file {path}: {e.strerror or e}; check verification.pairs") from None
  _refuse_pickle(path, raw)
  try:
    lines = [ln.split() for ln in raw.decode("utf-8").splitlines() if ln.strip()]
  except UnicodeDecodeError:
    raise UserError(f"{path} is not a text pairs file (LFW pairs.txt format)") from None
  if not lines or not all(t.isdigit() for t in lines[0]) or len(lines[0]) not in (1, 2):
    raise UserError(f"{path}: the first line must be 'FOLDS N' (LFW View 2: '10 300') or 'N'; "
                    f"found {' '.join(lines[0]) if lines else 'an empty file'!r}")
  folds, n = (1, int(lines[0][0])) if len(lines[0]) == 1 else map(int, lines[0])
  body = lines[1:]
  if len(body) != folds * 2 * n:
    raise UserError(f"{path}: the header promises {folds} fold(s) of {n} matched + {n} mismatched pairs "
                    f"({folds * 2 * n} lines), but {len(body)} pair lines follow")
  out = Pairs([], [], [], [], [], [])
  for k, parts in enumerate(body):
    matched = (k % (2 * n)) < n
    want = 3 if matched else 4
    ok = len(parts) == want and parts[1].isdigit() and parts[-1].isdigit()
    if not ok:
      kind = "matched 'name i j'" if matched else "mismatched 'name1 i name2 j'"
      raise UserError(f"{path} line {k + 2}: expected a {kind} pair, found {' '.join(parts)!r}")
    a, i, b, j = (parts[0], parts[1], parts[0], parts[2]) if matched else parts
    out.names1.append(a)
    out.index1.append(int(i))
    out.names2.append(b)
    out.index2.append(int(j))
    out.same.append(matched)
    out.fold.append(k // (2 * n))
  return Pairs(out.names1, np.asarray(out.index1, np.int64), out.names2, np.asarray(out.index2, np.int64),
               np.asarray(out.same, bool), np.asarray(out.fold, np.int64))


def to_text(pairs):
  """The pairs.txt text of `pairs` (made by `draw`: each fold's matched pairs first, N of each kind per fold)."""
  folds = np.unique(pairs.fold)
  n = int(np.sum(pairs.same & (pairs.fold == folds[0])))
  lines = [f"{len(folds)} {n}"]
  for f in folds:
    for want in (True, False):
      for k in np.flatnonzero((pairs.fold == f) & (pairs.same == want)):
        if want:
          lines.append(f"{pairs.names1[k]}\t{pairs.index1[k]}\t{pairs.index2[k]}")
        else:
          lines.append(f"{pairs.names1[k]}\t{pairs.index1[k]}\t{pairs.names2[k]}\t{pairs.index2[k]}")
  return "\n".join(lines) + "\n"


def draw(counts, folds, per_fold, seed):
  """Pairs over identities {name: image count}, LFW-style: identities dealt to `folds` disjoint folds; per fold
  `per_fold` distinct matched pairs (two images of one identity with 2+ images) and as many distinct mismatched
  pairs (one image each of two identities), fewer where the fold's identities cannot give that many; the same
  number of each kind in every fold (the format has one N). An identity with one image is never in a matched pair."""
  rng = np.random.default_rng(seed)
  names = sorted(counts)
  order = rng.permutation(len(names))
  dealt = [[names[i] for i in order[f::folds]] for f in range(folds)]
  if any(len(d) < 2 for d in dealt):
    raise UserError(f"{len(names)} held-out identities cannot make {folds} folds of pairs (each needs 2+): "
                    "hold out more identities (verification.holdout_identities) or use fewer folds")
  matched, mismatched = [], []
  for ids in dealt:
    multi = [n for n in ids if counts[n] >= 2]
    possible = sum(counts[n] * (counts[n] - 1) // 2 for n in multi)
    m = _distinct(rng, per_fold, possible, lambda: _matched(rng, multi, counts))
    x = _distinct(rng, per_fold, None, lambda: _mismatched(rng, ids, counts))
    matched.append(m)
    mismatched.append(x)
  n = min(min(len(m) for m in matched), min(len(x) for x in mismatched))
  if n == 0:
    raise UserError("the held-out identities give no matched pair (every one has a single image): hold out "
                    "identities with two or more images")
  out = Pairs([], [], [], [], [], [])
  for f in range(folds):
    for same, group in ((True, matched[f][:n]), (False, mismatched[f][:n])):
      for a, i, b, j in group:
        out.names1.append(a)
        out.index1.append(i)
        out.names2.append(b)
        out.index2.append(j)
        out.same.append(same)
        out.fold.append(f)
  return Pairs(out.names1, np.asarray(out.index1, np.int64), out.names2, np.asarray(out.index2, np.int64),
               np.asarray(out.same, bool), np.asarray(out.fold, np.int64))


def _matched(rng, multi, counts):
  if not multi:
    return None
  name = multi[rng.integers(len(multi))]
  i, j = sorted(rng.choice(counts[name], 2, replace=False) + 1)
  return name, int(i), name, int(j)


def _mismatched(rng, ids, counts):
  a, b = rng.choice(len(ids), 2, replace=False)
  a, b = sorted((ids[a], ids[b]))
  return a, int(rng.integers(counts[a]) + 1), b, int(rng.integers(counts[b]) + 1)


def _distinct(rng, want, possible, make):
  """Up to `want` distinct pairs from `make()` (at most `possible` exist; None: plenty), in drawing order."""
  want = want if possible is None else min(want, possible)
  seen, out = set(), []
  for _ in range(want * 20):
    if len(out) >= want:
      break
    p = make()
    if p is not None and p not in seen:
      seen.add(p)
      out.append(p)
  return out
