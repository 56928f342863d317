"""`imgrec serve --model-repository` on a real server on 127.0.0.1: Triton's repository extension through
`tritonclient.http` and `tritonclient.grpc` as they are, runs / import folders / export artifacts as versions,
bad versions with reasons, labels, stats, config, admin keys, reloads and unloads under load with no failed
request, poll mode, and LRU eviction under a memory budget. The repository's rules alone:
tests/test_repository.py."""
import gc
import json
import os
import re
import shutil
import threading
import time

import jax
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from imgrec import checkpoint_import, export, workdir as wd
from imgrec.serve import app as app_lib, protocol
from tests.test_serve import KEY, running_server
from tests.torch_reference import randomise, timm
from timm.models import _hub  # after tests.torch_reference, which makes timm importable

ADMIN = "admin-5e1d"
H = {"Authorization": f"Bearer {KEY}"}
A = {"Authorization": f"Bearer {ADMIN}"}
LIMITS = protocol.Limits(max_body_bytes=1 << 20, max_images=64)


def run_version(root, name, version, workdir):
  """DIR/NAME/VERSION as a link to a trained run (what an agent that places folders does, cheaply)."""
  os.makedirs(os.path.join(root, name), exist_ok=True)
  os.symlink(workdir, os.path.join(root, name, str(version)))


def options(**kw):
  return app_lib.Options(batch_sizes=(1, 4), max_delay_ms=1, max_queue=64, timeout_s=20, limits=LIMITS,
                         float_inputs=False, **kw)


def states(rows, name):
  return {r.get("version"): (r["state"], r["reason"]) for r in rows if r["name"] == name}


@pytest.fixture(scope="module")
def repo_dir(trained_workdir, tmp_path_factory):
  """digits/1, digits/2 (runs; labels stable=1, canary=2), exp/1 (an export artifact), vit/1 (an `imgrec import`
  of a tiny timm ViT with label names), and bad ones: bad/abc + bad/1 (empty), damaged/1 (config.json cut short),
  unknown/1 (a run of an unknown task)."""
  root = str(tmp_path_factory.mktemp("repository"))
  run_version(root, "digits", 1, trained_workdir)
  run_version(root, "digits", 2, trained_workdir)
  with open(os.path.join(root, "digits", "model.json"), "w") as f:
    json.dump({"version_policy": "all", "labels": {"stable": 1, "canary": 2}}, f)
  os.makedirs(os.path.join(root, "exp", "1"))
  export.export_workdir(trained_workdir, os.path.join(root, "exp", "1", "model.zip"), platforms=("cpu",))
  vit = randomise(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=3, img_size=16,
                                    patch_size=8, embed_dim=192, depth=1, num_heads=3))
  folder = str(tmp_path_factory.mktemp("vit") / "timm")
  _hub.save_for_hf(vit, folder, safe_serialization=True)
  with open(os.path.join(folder, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({**cfg, "label_names": ["ant", "bee", "cat"]}, f)
  checkpoint_import.import_checkpoint(folder, os.path.join(root, "vit", "1"))
  os.makedirs(os.path.join(root, "bad", "abc"))
  os.makedirs(os.path.join(root, "bad", "1"))
  for name, text in (("damaged", open(os.path.join(trained_workdir, "config.json")).read()[:40]),
                     ("unknown", json.dumps({**json.load(open(os.path.join(trained_workdir, "config.json"))),
                                             "task": "nope"}))):
    os.makedirs(os.path.join(root, name, "1"))
    shutil.copy(os.path.join(trained_workdir, "dataset.json"), os.path.join(root, name, "1"))
    with open(os.path.join(root, name, "1", "config.json"), "w") as f:
      f.write(text)
  return root


@pytest.fixture(scope="module")
def server(repo_dir):
  opts = options(model_repository=repo_dir, control_mode="explicit", load_models=("digits",), api_keys=(KEY,),
                 admin_keys=(ADMIN,), grpc_address="127.0.0.1:0")
  with running_server([], opts) as (url, gate):
    yield url, gate


def test_tritonclient_http_manages_the_repository(server, reference):
  url, gate = server
  images, top1, _ = reference
  c = th.InferenceServerClient(url[len("http://"):])
  rows = c.get_model_repository_index(headers=dict(A))
  assert states(rows, "digits") == {"1": ("READY", ""), "2": ("READY", "")}
  assert states(rows, "exp") == {"1": ("UNAVAILABLE", "not loaded")}
  assert "positive integer" in states(rows, "bad")["abc"][1]
  assert [r["name"] for r in c.get_model_repository_index(headers=dict(A), query_params=None)
          if r["state"] == "READY"] == ["digits", "digits"]
  with pytest.raises(InferenceServerException, match="model management needs an admin key"):
    c.get_model_repository_index(headers=dict(H))  # an inference key: 403
  assert requests.post(url + "/v2/repository/index", json={"ready": True}, headers=A).json() == [
      {"name": "digits", "version": v, "state": "READY", "reason": ""} for v in ("1", "2")]
  # bad versions: each load fails with its reason, nothing else stops
  for name, words in (("damaged", "config.json is not valid JSON"), ("unknown", "unknown task 'nope'"),
                      ("bad", "holds no run (config.json)")):
    with pytest.raises(InferenceServerException, match=re.escape(words)):
      c.load_model(name, headers=dict(A))
    assert words in states(c.get_model_repository_index(headers=dict(A)), name)["1"][1]
  # an export artifact and an import folder load and answer like runs
  assert {"model_repository", "statistics", "model_configuration"} <= set(
      c.get_server_metadata(headers=dict(H))["extensions"])
  assert not c.is_model_ready("exp", headers=dict(H))
  c.load_model("exp", headers=dict(A))
  x = th.InferInput("images", list(images.shape), "UINT8")
  x.set_data_from_numpy(images)
  np.testing.assert_array_equal(c.infer("exp", [x], headers=dict(H)).as_numpy("logits").argmax(-1), top1)
  c.load_model("vit", headers=dict(A), config=None)
  v = th.InferInput("images", [2, 16, 16, 3], "UINT8")
  v.set_data_from_numpy(np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8))
  out = c.infer("vit", [v], outputs=[th.InferRequestedOutput("probabilities", class_count=3)], headers=dict(H))
  labels = {s.decode().split(":")[2] for s in out.as_numpy("probabilities").ravel()}
  assert labels == {"ant", "bee", "cat"}  # the checkpoint's own class names
  # labels route TF-Serving requests; GET /v1/models/NAME shows every version's state
  for label, status in (("stable", 200), ("canary", 200), ("beta", 404)):
    r = requests.post(f"{url}/v1/models/digits/labels/{label}:predict", json={"instances": images[:2].tolist()},
                      headers=H)
    assert r.status_code == status, r.text
  c.unload_model("exp", headers=dict(A))
  assert requests.get(url + "/v1/models/exp", headers=H).json()["model_version_status"][0]["state"] == "END"
  assert [s["state"] for s in requests.get(url + "/v1/models/digits", headers=H).json()["model_version_status"]] \
      == ["AVAILABLE", "AVAILABLE"]
  with pytest.raises(InferenceServerException, match="'exp' is not loaded"):
    c.infer("exp", [x], headers=dict(H))
  # statistics, configuration, per-model metrics
  c.infer("digits", [x], model_version="2", headers=dict(H))
  stats = {s["version"]: s for s in c.get_inference_statistics("digits", headers=dict(H))["model_stats"]}
  two = stats["2"]
  assert two["inference_count"] >= 64 and two["execution_count"] >= 1 and two["last_inference"] > 0
  assert two["inference_stats"]["success"]["count"] >= 1 and two["inference_stats"]["queue"]["ns"] > 0
  assert two["memory_usage"][0]["byte_size"] > 0
  config = c.get_model_config("digits", headers=dict(H))
  assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [8, 8, 1]}]
  assert config["dynamic_batching"]["preferred_batch_size"] == [1, 4] and config["version_policy"] == {"all": {}}
  metrics = requests.get(url + "/metrics", headers=H).text
  assert 'imgrec_model_requests_total{model="digits",outcome="success",version="2"}' in metrics
  assert 'imgrec_model_images_total{model="digits",version="2"} ' in metrics
  # names that are not plain are refused before the file system is touched
  for bad in ("x..y", "..%2Fetc", "%2Fetc"):
    r = requests.post(f"{url}/v2/repository/models/{bad}/load", headers=A)
    assert r.status_code in (400, 404) and "not a plain name" in r.text or r.status_code == 404, (bad, r.text)
  assert requests.post(f"{url}/v2/repository/models/x..y/load", headers=A).status_code == 400
  # an octet-stream body is an upload, never JSON: an empty or non-image one gets an image error
  octet = {**H, "Content-Type": "application/octet-stream"}
  for raw, status, words in ((b"", 400, "empty body; send an image"), (b"\x00garbage", 415, "unsupported image")):
    r = requests.post(url + "/v1/models/digits:predict", data=raw, headers=octet)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_tritonclient_grpc_manages_the_repository(server):
  url, gate = server
  c = tg.InferenceServerClient(f"127.0.0.1:{gate.app.state.grpc_port}")
  admin, inference = {"authorization": f"Bearer {ADMIN}"}, {"authorization": f"Bearer {KEY}"}
  index = c.get_model_repository_index(headers=admin)
  assert {(m.name, m.version, m.state) for m in index.models if m.name == "digits"} == {
      ("digits", "1", "READY"), ("digits", "2", "READY")}
  with pytest.raises(InferenceServerException, match="admin key") as e:
    c.unload_model("digits", headers=inference)
  assert "PERMISSION_DENIED" in e.value.status()
  c.load_model("exp", headers=admin)
  assert c.is_model_ready("exp", headers=inference)
  stats = c.get_inference_statistics("exp", headers=inference)
  assert [s.version for s in stats.model_stats] == ["1"] and stats.model_stats[0].memory_usage[0].byte_size > 0
  config = c.get_model_config("exp", headers=inference).config
  assert (config.name, list(config.input[0].dims), [o.name for o in config.output]) == (
      "exp", [8, 8, 1], ["logits", "probabilities"])
  c.unload_model("exp", headers=admin)
  assert not c.is_model_ready("exp", headers=inference)
  with pytest.raises(InferenceServerException, match="failed to load model 'damaged'"):
    c.load_model("damaged", headers=admin)


def test_unload_frees_the_parameters_and_programs(server, reference):
  """After an unload, no device array of the version is left alive (its parameters and compiled programs go
  with its batchers)."""
  url, gate = server
  c = th.InferenceServerClient(url[len("http://"):])
  for name in ("exp", "vit"):  # whatever the tests before left loaded
    c.unload_model(name, headers=dict(A))
  gc.collect()
  before = len(jax.live_arrays())
  c.load_model("exp", headers=dict(A))
  c.load_model("vit", headers=dict(A))
  gc.collect()
  loaded = len(jax.live_arrays())
  c.unload_model("vit", headers=dict(A))
  c.unload_model("exp", headers=dict(A))
  gc.collect()
  assert loaded > before and len(jax.live_arrays()) <= before, (before, loaded, len(jax.live_arrays()))


def test_control_mode_none_refuses_load_and_unload(trained_workdir, tmp_path):
  """Mode none loads everything at start; a --workdir model (version: its checkpoint's step) sits beside them."""
  run_version(str(tmp_path), "m", 3, trained_workdir)
  with running_server([("fixed", None, trained_workdir)], options(model_repository=str(tmp_path))) as (url, _):
    r = requests.post(url + "/v2/repository/models/m/unload")
    assert r.status_code == 400 and "refused in model control mode 'none'" in r.json()["error"]
    assert requests.get(url + "/v2/models/m/versions/3/ready").status_code == 200  # loaded at start
    assert requests.get(url + "/v2/models/fixed/versions/60/ready").status_code == 200
    assert {r["name"] for r in requests.post(url + "/v2/repository/index").json()} == {"fixed", "m"}


def test_reloads_and_unloads_under_load_fail_no_request(trained_workdir, reference, tmp_path):
  """Model a answers a steady client while it is reloaded (its files change) and model b loads and unloads,
  over and over: every request succeeds, and a's requests see the new copies."""
  images, top1, _ = reference
  root = str(tmp_path)
  shutil.copytree(trained_workdir, os.path.join(root, "a", "1"))
  run_version(root, "b", 1, trained_workdir)
  with running_server([], options(model_repository=root, control_mode="explicit", load_models=("a",))) as (url, g):
    repo = g.app.state.server.repo
    stop, results = threading.Event(), []

    def client():
      with requests.Session() as s:
        while not stop.is_set():
          r = s.post(url + "/v1/models/a:predict", json={"instances": images[:4].tolist()}, timeout=30)
          ok = r.status_code == 200 and np.argmax(r.json()["predictions"], -1).tolist() == top1[:4].tolist()
          results.append(ok or r.text)
    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
      t.start()
    copies = set()
    for i in range(3):
      with open(os.path.join(root, "a", "1", f"touched{i}"), "w") as f:
        f.write(str(i))  # a changed version: the next load reloads it
      assert requests.post(url + "/v2/repository/models/b/load").status_code == 200
      assert requests.post(url + "/v2/repository/models/a/load").status_code == 200
      copies.add(id(repo.models["a"].versions[1].slot.served))
      assert requests.post(url + "/v2/repository/models/b/unload").status_code == 200
    stop.set()
    for t in threads:
      t.join(30)
  failed = [r for r in results if r is not True]
  assert len(results) > 20 and not failed, (len(results), failed[:3])
  assert len(copies) == 3  # every reload swapped in a new copy


def test_poll_mode_follows_the_folder(trained_workdir, tmp_path):
  root = str(tmp_path)
  run_version(root, "m", 1, trained_workdir)
  with running_server([], options(model_repository=root, control_mode="poll", poll_secs=0.2)) as (url, _):
    def index():
      return states(requests.post(url + "/v2/repository/index").json(), "m")

    def wait_for(expected):
      deadline = time.monotonic() + 60
      while index() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
      assert index() == expected
    assert index() == {"1": ("READY", "")}
    run_version(root, "m", 2, trained_workdir)
    wait_for({"1": ("UNAVAILABLE", "unloaded: not in the version policy"), "2": ("READY", "")})
    os.remove(os.path.join(root, "m", "2"))
    wait_for({"1": ("READY", "")})
    assert requests.post(url + "/v2/repository/models/m/load").status_code == 400  # the folder decides


def test_budget_for_two_of_four_models_evicts_least_recently_used(trained_workdir, reference, tmp_path):
  images, top1, _ = reference
  root = str(tmp_path)
  for name in "abcd":
    run_version(root, name, 1, trained_workdir)
  run = wd.restore(trained_workdir, params_only=True)
  one = sum(x.nbytes for x in jax.tree.leaves(run.variables))
  opts = options(model_repository=root, control_mode="explicit", memory_budget=int(2.5 * one))
  with running_server([], opts) as (url, g):
    for _ in range(2):
      for name in "abcd":  # round-robin: each request loads its model, evicting the least recently used
        r = requests.post(f"{url}/v1/models/{name}:predict", json={"instances": images[:2].tolist()})
        assert r.status_code == 200 and np.argmax(r.json()["predictions"], -1).tolist() == top1[:2].tolist()
        assert g.app.state.server.repo.loaded_bytes() <= 2.5 * one
    rows = requests.post(url + "/v2/repository/index").json()
    assert [r["name"] for r in rows if r["state"] == "READY"] == ["c", "d"]
    assert states(rows, "a")["1"][1].startswith("evicted: memory budget")
    assert g.app.state.server.repo.evictions == 6
    assert 'imgrec_model_evictions_total{model="a",version="1"} 2.0' in requests.get(url + "/metrics").text
