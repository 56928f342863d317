"""Verification data (imgrec/tasks/verification/{pairs,data,glyphs}.py): the LFW pairs.txt format, pairs drawn
over held-out identities, identity folders with real image files, the embedded glyph identities, and one clear
error per bad input."""
import pickle

import numpy as np
import pytest
from PIL import Image

from imgrec import config
from imgrec.errors import UserError
from imgrec.tasks.verification import data, glyphs, pairs

LFW_SAMPLE = """2\t2
Aaron_Peirsol\t1\t2
Abel_Pacheco\t1\t4
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdul_Rahman\t1\tPeter_Bucks\t1
Akhmed_Zakayev\t1\t3
Amber_Tamblyn\t1\t2
Adam_Scott\t2\tDavid_Wells\t1
Alan_Tang_Kwong-wing\t1\tThomas_Rupprath\t2
"""


def _cfg(source, **v):
  cfg = config.defaults()
  cfg.task = "verification"
  cfg.data.source = source
  cfg.verification.update(v)
  return cfg


def _folder(root, counts, size=(12, 10)):
  for name, n in counts.items():
    (root / name).mkdir(parents=True)
    for i in range(n):
      a = np.full((*size, 3), (hash(name) + 37 * i) % 256, np.uint8)
      Image.fromarray(a).save(root / name / f"{name}_{i + 1:04d}.png")
  return root


def test_reads_the_lfw_view2_format(tmp_path):
  (tmp_path / "pairs.txt").write_text(LFW_SAMPLE)
  p = pairs.read(str(tmp_path / "pairs.txt"))
  assert len(p) == 8 and p.same.tolist() == [True, True, False, False] * 2
  assert p.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  assert (p.names1[0], p.index1[0], p.names2[0], p.index2[0]) == ("Aaron_Peirsol", 1, "Aaron_Peirsol", 2)
  assert (p.names1[2], p.index1[2], p.names2[2], p.index2[2]) == ("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1)
  (tmp_path / "dev.txt").write_text("1\nA\t1\t2\nA\t1\tB\t1\n")  # View 1's one-number header
  assert pairs.read(str(tmp_path / "dev.txt")).same.tolist() == [True, False]


@pytest.mark.parametrize("text,match", [
    ("ten 300\n", "first line"),
    ("2 2\nA 1 2\n", "promises 2 fold"),
    ("1 1\nA 1 2\nA 1 B\n", "line 3: expected a mismatched"),
    ("1 1\nA 1 B 2\nA 1 B 1\n", "line 2: expected a matched"),
])
def test_a_broken_pairs_file_is_one_clear_error(tmp_path, text, match):
  (tmp_path / "pairs.txt").write_text(text)
  with pytest.raises(UserError, match=match):
    pairs.read(str(tmp_path / "pairs.txt"))


def test_pickled_pair_files_are_refused_unread(tmp_path):
  marker = tmp_path / "ran"
  payload = pickle.dumps(ValueError)  # harmless, but a pickle: must never be loaded
  for name in ("lfw.bin", "pairs.txt"):
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(UserError, match="never unpickles"):
      pairs.read(str(tmp_path / name))
  assert not marker.exists()


def test_drawn_pairs_are_lfw_like_and_round_trip(tmp_path):
  counts = {f"id{i:03d}": (1 if i % 7 == 0 else 2 + i % 5) for i in range(120)}
  p = pairs.draw(counts, folds=10, per_fold=20, seed=0)
  n = int(p.same.sum()) // 10
  assert n > 0 and all(((p.fold == f) & p.same).sum() == n == ((p.fold == f) & ~p.same).sum() for f in range(10))
  for f in range(10):  # folds share no identity
    here = set(np.array(p.names1)[p.fold == f]) | set(np.array(p.names2)[p.fold == f])
    other = set(np.array(p.names1)[p.fold != f]) | set(np.array(p.names2)[p.fold != f])
    assert not here & other
  for k in range(len(p)):
    assert 1 <= p.index1[k] <= counts[p.names1[k]] and 1 <= p.index2[k] <= counts[p.names2[k]]
    if p.same[k]:
      assert counts[p.names1[k]] >= 2 and p.index1[k] != p.index2[k]
    else:
      assert p.names1[k] != p.names2[k]
  keys = list(zip(p.names1, p.index1, p.names2, p.index2))
  assert len(set(keys)) == len(keys)
  (tmp_path / "pairs.txt").write_text(pairs.to_text(p))
  back = pairs.read(str(tmp_path / "pairs.txt"))
  assert back.names1 == p.names1 and back.names2 == p.names2 and (back.same == p.same).all()
  assert (back.index1 == p.index1).all() and (back.fold == p.fold).all()


def test_identity_folders_hold_out_identities_for_pairs(tmp_path, caplog):
  counts = {f"person{i:02d}": 1 + i % 4 for i in range(40)}
  root = _folder(tmp_path / "ids", counts)
  ds = data.open_data(_cfg(f"identities:{root}").data, _cfg("", folds=4, pairs_per_fold=5).verification)
  assert "single image" in caplog.text
  train, test = ds.split("train"), ds.split("test")
  trained = set(ds.class_names)
  named = set(test.pairs.names1) | set(test.pairs.names2)
  assert named and not trained & named  # held-out identities only
  assert len(train) == sum(counts[n] for n in trained)
  assert sorted(set(train.labels.tolist())) == list(range(len(trained)))
  ex = test.example(int(test.first[0]), False, np.random.default_rng(0))
  assert ex["image"].shape == ds.image_shape and ex["image"].dtype == np.uint8
  # a pair's indices point at the very files it names
  k = 0
  path = test.split.describe(int(test.first[k]))
  assert path.endswith(f"{test.pairs.names1[k]}/{test.pairs.names1[k]}_{test.pairs.index1[k]:04d}.png")


def test_a_pairs_file_over_another_folder_and_missing_images(tmp_path):
  train_root = _folder(tmp_path / "casia", {f"c{i}": 3 for i in range(5)})
  lfw = _folder(tmp_path / "lfw", {"Aaron_Peirsol": 2, "Abel_Pacheco": 4, "Dean_Barker": 1, "Peter_Bucks": 1})
  (lfw / "pairs.txt").write_text("1\t2\nAaron_Peirsol\t1\t2\nAbel_Pacheco\t1\t4\n"
                                 "Aaron_Peirsol\t1\tDean_Barker\t1\nAbel_Pacheco\t2\tPeter_Bucks\t1\n")
  v = _cfg("", pairs=str(lfw / "pairs.txt")).verification
  ds = data.open_data(_cfg(f"identities:{train_root}").data, v)
  assert len(ds.split("train")) == 15 and len(ds.class_names) == 5  # every training identity is trained on
  test = ds.split("test")
  assert len(test) == 7 and test.pairs.same.tolist() == [True, True, False, False]
  (lfw / "pairs.txt").write_text("1\t1\nAaron_Peirsol\t1\t3\nNobody\t1\tDean_Barker\t1\n")
  with pytest.raises(UserError, match=r"2 image\(s\) that do not exist.*Aaron_Peirsol 3 \(2 image"):
    data.open_data(_cfg(f"identities:{train_root}").data, v)


def test_one_image_identities_are_never_matched_and_too_few_is_clear(tmp_path):
  root = _folder(tmp_path / "ids", {f"p{i}": 1 for i in range(30)})
  with pytest.raises(UserError, match="no matched pair"):
    data.open_data(_cfg(f"identities:{root}").data, _cfg("", folds=2).verification)
  with pytest.raises(UserError, match="identity folder .* not found"):
    data.open_data(_cfg(f"identities:{tmp_path / 'nope'}").data, _cfg("").verification)


def test_glyph_identities_are_plentiful_and_split_disjoint():
  names, masters = glyphs.identities()
  assert len(names) > 1000 and len(set(names)) == len(names)
  assert len({m.tobytes() for m in masters}) == len(names)  # no font draws two characters alike
  a, _ = glyphs.generate([5], 3, 32)
  b, _ = glyphs.generate([5], 3, 32)
  assert np.array_equal(a, b) and not np.array_equal(a[0], a[1])  # deterministic, varied
  cfg = _cfg("face_glyphs", pairs_per_fold=50)
  cfg.data.glyph_images = 3
  ds = data.open_data(cfg.data, cfg.verification)
  test = ds.split("test")
  assert len(test.pairs) == 1000 and test.pairs.same.sum() == 500  # 10 folds of 50 + 50
  assert not set(ds.class_names) & (set(test.pairs.names1) | set(test.pairs.names2))
  assert ds.split("train").take(np.arange(4))["image"].shape == (4, 32, 32, 3)
