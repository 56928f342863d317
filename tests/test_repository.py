"""The model repository's rules (imgrec/serve/repository.py) with a fake loader: scanning, version policies and
labels, states and reasons, reload swaps and drains, unloads, the memory budget's LRU eviction, poll mode.
The real server over HTTP and gRPC: tests/test_serve_repository.py."""
import json
import os
import shutil
import threading
import time

import pytest

from imgrec.errors import UserError
from imgrec.serve import repository as rp
from imgrec.serve.protocol import RequestError


class Fake:
  """What the loader returns: closes once; `nbytes` from the folder's size file."""

  def __init__(self, path):
    self.path, self.closed = path, False
    size = os.path.join(path, "size")
    self.nbytes = int(open(size).read()) if os.path.isfile(size) else 100

  def close(self):
    assert not self.closed
    self.closed = True


class Loader:
  def __init__(self):
    self.calls, self.lock = [], threading.Lock()

  def __call__(self, name, version, path, settings, stats):
    with self.lock:
      self.calls.append((name, version))
    if os.path.isfile(os.path.join(path, "broken")):
      raise UserError(f"{path}/config.json is not valid JSON")
    return Fake(path)


def version(root, name, v, **extra):
  path = os.path.join(root, name, str(v))
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write("{}")
  for k, value in extra.items():
    with open(os.path.join(path, k), "w") as f:
      f.write(str(value))
  return path


def settings(root, name, value):
  with open(os.path.join(root, name, rp.SETTINGS_FILE), "w") as f:
    json.dump(value, f)


def states(repo, name):
  return {r.get("version"): (r["state"], r["reason"]) for r in repo.index() if r["name"] == name}


def test_index_gives_every_version_a_state_and_bad_folders_a_reason(tmp_path):
  root = str(tmp_path)
  for v in (1, 2, 3):
    version(root, "a", v)
  os.makedirs(tmp_path / "a" / "best")
  os.makedirs(tmp_path / "empty")
  os.makedirs(tmp_path / "hollow" / "1")
  version(root, "damaged", 1, broken=1)
  version(root, "badcfg", 1)
  settings(root, "badcfg", {"version_policy": {"latest": 0}})
  repo = rp.Repository(Loader(), root, "none")
  repo.load_all()
  assert states(repo, "a") == {"1": ("UNAVAILABLE", "not loaded"), "2": ("UNAVAILABLE", "not loaded"),
                               "3": ("READY", ""), "best": ("UNAVAILABLE", pytest.approx(
                                   "ignored: a version folder's name must be a positive integer (NAME/1/, NAME/2/, "
                                   "...)"))}
  assert states(repo, "empty")[None][1].endswith("has no version folders (NAME/1/, NAME/2/, ...)")
  assert "holds no run (config.json)" in states(repo, "hollow")["1"][1]
  assert states(repo, "damaged")["1"] == ("UNAVAILABLE", f"load failed: {tmp_path}/damaged/1/config.json is not "
                                          "valid JSON")
  assert "version_policy {'latest': 0} must be" in repo.model("badcfg").reason
  assert [r["name"] for r in repo.index(ready_only=True)] == ["a"]


def test_version_policies_and_labels(tmp_path):
  root = str(tmp_path)
  for v in (1, 2, 5):
    version(root, "m", v)
  settings(root, "m", {"version_policy": {"latest": 2}, "labels": {"stable": 2, "canary": 5}})
  repo = rp.Repository(Loader(), root, "explicit")
  repo.load("m")
  assert {v for v, (s, _) in states(repo, "m").items() if s == "READY"} == {"2", "5"}
  for asked, got in ((None, 5), ("stable", 2), ("canary", 5), ("2", 2)):
    lease = repo.acquire("m", asked)
    assert lease.version == got and lease.served.path.endswith(f"/{got}")
    repo.release(lease)
  with pytest.raises(RequestError, match="has no version label 'beta'") as e:
    repo.acquire("m", "beta")
  assert e.value.status == 404
  with pytest.raises(RequestError, match=r"version '1' is not loaded \(1: UNAVAILABLE") as e:
    repo.acquire("m", "1")
  assert e.value.status == 404
  settings(root, "m", {"version_policy": {"specific": [1]}})
  repo.load("m")  # the settings are read again; 2 and 5 are unloaded
  assert {v: s for v, (s, _) in states(repo, "m").items()} == {"1": "READY", "2": "UNAVAILABLE", "5": "UNAVAILABLE"}
  settings(root, "m", {"version_policy": "all"})
  repo.load("m")
  assert all(s == "READY" for s, _ in states(repo, "m").values())


def test_names_that_are_not_plain_are_refused(tmp_path):
  repo = rp.Repository(Loader(), str(tmp_path), "explicit")
  for bad in ("..", "../etc", "a/b", "%2F", "/abs", "a..b", ""):
    with pytest.raises(RequestError, match="is not a plain name") as e:
      repo.load(bad)
    assert e.value.status == 400
  with pytest.raises(RequestError, match="model .nope. not found") as e:
    repo.acquire("nope")
  assert e.value.status == 404


def test_reload_swaps_and_the_old_copy_drains(tmp_path):
  root = str(tmp_path)
  path = version(root, "m", 1)
  loader = Loader()
  repo = rp.Repository(loader, root, "explicit")
  repo.load("m")
  held = repo.acquire("m")  # a request in flight on the first copy
  repo.load("m")  # nothing changed on disk: nothing reloads
  assert loader.calls == [("m", 1)]
  time.sleep(0.01)
  with open(os.path.join(path, "weights"), "w") as f:
    f.write("new")
  done = threading.Event()
  threading.Thread(target=lambda: (repo.load("m"), done.set()), daemon=True).start()
  deadline = time.monotonic() + 5
  while len(loader.calls) < 2 and time.monotonic() < deadline:
    time.sleep(0.005)
  time.sleep(0.05)
  new = repo.acquire("m")  # new requests get the new copy at once
  assert new.served is not held.served and not held.served.closed and not done.is_set()  # the old one drains
  old = held.served
  repo.release(held)
  assert done.wait(5) and old.closed and not new.served.closed
  repo.release(new)
  repo.unload("m")
  assert new.served is None or new.slot.served is None  # the slot let go of it
  assert states(repo, "m")["1"] == ("UNAVAILABLE", "unloaded")


def test_a_failed_reload_keeps_the_old_copy_serving(tmp_path):
  root = str(tmp_path)
  path = version(root, "m", 1)
  repo = rp.Repository(Loader(), root, "poll")
  repo.poll()
  first = repo.acquire("m")
  repo.release(first)
  with open(os.path.join(path, "broken"), "w") as f:
    f.write("1")
  repo.poll()
  state, reason = states(repo, "m")["1"]
  assert state == "READY" and reason.startswith("reload failed, the loaded copy keeps serving:")
  lease = repo.acquire("m")
  assert lease.served is first.served
  repo.release(lease)


def test_poll_picks_up_new_versions_and_drops_removed_ones(tmp_path):
  root = str(tmp_path)
  version(root, "m", 1)
  repo = rp.Repository(Loader(), root, "poll")
  repo.poll()
  lease = repo.acquire("m")
  assert lease.version == 1
  repo.release(lease)
  version(root, "m", 2)
  version(root, "n", 1)
  repo.poll()
  assert states(repo, "m") == {"1": ("UNAVAILABLE", "unloaded: not in the version policy"), "2": ("READY", "")}
  assert states(repo, "n") == {"1": ("READY", "")}
  shutil.rmtree(tmp_path / "m" / "2")
  shutil.rmtree(tmp_path / "n")
  repo.poll()
  assert states(repo, "m") == {"1": ("READY", "")} and states(repo, "n") == {}


def test_budget_evicts_least_recently_used_idle_models(tmp_path):
  root = str(tmp_path)
  for name in "abcd":
    version(root, name, 1, size=100)
  loader = Loader()
  repo = rp.Repository(loader, root, "explicit", budget=250)
  for _ in range(3):
    for name in "abcd":  # round-robin: each request loads its model on demand
      lease = repo.acquire(name)
      assert repo.loaded_bytes() <= 250
      repo.release(lease)
  assert len(loader.calls) == 12 and repo.evictions == 10
  ready = [r["name"] for r in repo.index(ready_only=True)]
  assert ready == ["c", "d"]
  assert states(repo, "a")["1"][1].startswith("evicted: memory budget 250 bytes, least recently used")
  busy = [repo.acquire(n) for n in "cd"]  # both held: nothing can be evicted for a third
  with pytest.raises(RequestError, match="memory budget of 250 bytes is full"):
    repo.acquire("a")
  for lease in busy:
    repo.release(lease)
  assert repo.acquire("a").version == 1 and repo.evictions == 11


def test_settings_are_checked(tmp_path):
  for bad, match in (({"version_policy": "newest"}, "version_policy 'newest' must be"),
                     ({"labels": {"1": 2}}, "labels must map plain names"),
                     ({"batch_sizes": [0]}, "batch_sizes must be a list of positive"),
                     ({"typo": 1}, r"unknown keys \['typo'\]")):
    with pytest.raises(UserError, match=match):
      rp.parse_settings(bad, "m/model.json")
  assert rp.parse_settings({"version_policy": {"specific": [3, 1]}, "batch_sizes": [8, 1]}, "x") == rp.Settings(
      ("specific", (1, 3)), (), (1, 8))
  assert rp.parse_budget("0.5", 1000) == 500 and rp.parse_budget("2K", 0) == 2048
  with pytest.raises(UserError, match="--memory-budget 'lots'"):
    rp.parse_budget("lots", 1000)
