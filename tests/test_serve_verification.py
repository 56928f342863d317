"""The verification task's routes on a real server (uvicorn on 127.0.0.1, requests): :verify at the run's
calibrated threshold or the request's, the gallery (enroll, search, list, delete) persisted beside the run across
a restart, admin keys in front of enroll and delete, its size and search latency in /metrics, and each bad input's
one message. A tiny verification run trained here (test_verification_task's config, a few steps) is served; every
score is checked against the run's own embeddings computed here, not against the model's quality."""
import base64
import concurrent.futures
import io
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import requests
from PIL import Image

from imgrec import state as train_state, train, workdir as wd
from imgrec.serve import app as app_lib, protocol
from imgrec.tasks import verification as task
from tests.conftest import tiny_config
from tests.test_serve import png, running_server
from tests.test_verification_task import _cfg

KEY = "face-key-5b1e"
H = {"Authorization": f"Bearer {KEY}"}
ADMIN = "face-admin-c07d"
A = {"Authorization": f"Bearer {ADMIN}"}
OPTIONS = dict(batch_sizes=(1, 2, 4), max_delay_ms=1, timeout_s=20, float_inputs=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, the held-out images [N, H, W, C] with their identities, `embed(encoded images) -> [n, D]`)."""
  workdir = str(tmp_path_factory.mktemp("face"))
  cfg = _cfg(loss="softmax")
  for key in ("steps", "log_every", "eval_every", "checkpoint_every"):
    cfg[key] = 6
  cfg.data.prefetch = tiny_config().data.prefetch
  train.train(cfg, workdir)
  held = task.open_data(cfg).split("test").split
  restored = wd.restore(workdir)
  predict = jax.jit(task.make_predict(restored.model, restored.info["mean"], restored.info["std"]))
  spec = protocol.ModelSpec(tuple(restored.info["image_shape"]), (), restored.info.get("pp_eval", ""))

  def embed(encoded):  # the server's decoding, then the run's predict: what a served score must equal
    images = np.stack([protocol.decode_upload(b, spec, protocol.Limits())[0] for b in encoded])
    return np.asarray(predict(train_state.variables(restored.state), images)["embeddings"])
  return workdir, held.images, np.asarray(held.labels), embed


@pytest.fixture(scope="module")
def server(run):
  with running_server([("faces", None, run[0])], app_lib.Options(**OPTIONS)) as (url, _):
    yield url


def b64(data):
  return base64.b64encode(data).decode()


def images_of(run, n):
  """The encoded images of the n-th held-out identity with two images or more."""
  _, images, labels, _ = run
  ids, counts = np.unique(labels, return_counts=True)
  return [png(im) for im in images[labels == ids[counts >= 2][n]]]


def calibrated(workdir):
  """The threshold of the evaluation record at the restored checkpoint's step, read here from metrics.jsonl."""
  step = int(wd.restore(workdir, params_only=True).state.step)
  return [r for r in wd.read_metrics(workdir) if r.get("step") == step and "threshold" in r][-1]["threshold"]


def test_verify_same_and_different_at_the_calibrated_or_given_threshold(run, server):
  workdir, _, _, embed = run
  a, b = images_of(run, 0)[0], images_of(run, 1)[0]
  expected = float(np.dot(*embed([a, b])))
  r = requests.post(server + "/v1/models/faces:verify", files={"image1": a, "image2": b})
  assert r.status_code == 200, r.text
  got = r.json()
  assert set(got) == {"score", "same", "threshold"} and got["threshold"] == calibrated(workdir)
  assert abs(got["score"] - expected) < 1e-4 and got["same"] == (got["score"] > got["threshold"])
  # the same image twice: cosine 1; a threshold between the two scores splits same from different
  t = (expected + 1) / 2
  same = requests.post(server + "/v1/models/faces:verify", json={"image1": b64(a), "image2": b64(a), "threshold": t})
  diff = requests.post(server + f"/v1/models/faces:verify?threshold={t}", json={"image1": b64(a), "image2": b64(b)})
  assert same.json() == {"score": pytest.approx(1.0, abs=1e-5), "same": True, "threshold": t}
  assert diff.json()["same"] is False and abs(diff.json()["score"] - expected) < 1e-4
  # two sizes: each upload is resized to the model's input, as the run's evaluation does
  big = png(np.asarray(Image.open(io.BytesIO(b)).resize((40, 24))))
  r = requests.post(server + "/v1/models/faces/versions/6:verify", files={"image1": a, "image2": big})
  assert r.status_code == 200 and abs(r.json()["score"] - float(np.dot(*embed([a, big])))) < 1e-4


def test_verify_bad_input_gets_one_message(run, server):
  a = images_of(run, 0)[0]
  url = server + "/v1/models/faces:verify"
  for kwargs, status, message in [
      (dict(files={"image1": a}), 400, "missing image field 'image2'"),
      (dict(json={"image1": b64(a)}), 400, "missing image field 'image2'"),
      (dict(json={"image1": b64(a), "image2": "not base64!"}), 400, "'image2' is not valid base64"),
      (dict(files={"image1": a, "image2": a}, data={"threshold": "high"}), 400, "threshold must be a number"),
      (dict(json={"image1": b64(a), "image2": b64(a), "threshold": 2}), 400, r"in \[-1, 1\]"),
      (dict(json={"image1": b64(a), "image2": b64(b"GIF89a")}), 415, "unsupported image format"),
      (dict(data=a, headers={"content-type": "image/png"}), 400, "missing image field 'image1'")]:
    r = requests.post(url, **kwargs)
    assert r.status_code == status and re.search(message, r.json()["error"]), (kwargs.keys(), r.text)


def metric(url, name, **labels):
  """A sample's value from /metrics (None when absent)."""
  text = requests.get(url + "/metrics", headers=H).text
  for line in text.splitlines():
    if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
      return float(line.rsplit(" ", 1)[1])
  return None


def copy_of(run, tmp_path):
  """A copy of the trained run (the tests that write a gallery beside it leave the shared one alone)."""
  return str(shutil.copytree(run[0], tmp_path / "run"))


def test_gallery_enroll_search_delete_and_persistence(run, tmp_path):
  workdir, embed = copy_of(run, tmp_path), run[3]
  path = os.path.join(workdir, "gallery.npz")
  enrolled = {"ann": images_of(run, 0), "bob": images_of(run, 1), "cy": images_of(run, 2)}
  query = images_of(run, 1)[1]
  q = embed([query])[0]
  best = {name: float((embed(v) @ q).max()) for name, v in enrolled.items()}  # an identity's best row
  ranked = sorted(best, key=lambda n: -best[n])
  with running_server([("faces", None, workdir)], app_lib.Options(**OPTIONS)) as (url, _):
    g = url + "/v1/models/faces/gallery"
    r = requests.post(g, data={"identity": "ann"}, files=[("image", b) for b in enrolled["ann"]])
    assert r.json() == {"identity": "ann", "enrolled": 2, "rows": 2, "gallery_size": 2}
    r = requests.post(g, json={"identity": "bob", "images": [b64(b) for b in enrolled["bob"]]})
    assert r.status_code == 200 and r.json()["gallery_size"] == 4
    r = requests.post(g, json={"identity": " cy ", "image": b64(enrolled["cy"][0])})
    r = requests.post(g, files={"image": enrolled["cy"][1]}, params={"identity": "cy"})
    assert r.json()["identity"] == "cy" and r.json()["rows"] == 2
    assert requests.get(g).json() == {"identities": {"ann": 2, "bob": 2, "cy": 2}, "gallery_size": 6}
    r = requests.post(g + ":search", files={"image": query}, data={"k": "2"})
    matches = r.json()["matches"]
    assert [m["identity"] for m in matches] == ranked[:2] and r.json()["k"] == 2
    assert matches[0]["score"] == pytest.approx(best[ranked[0]], abs=1e-4)
    exact = requests.post(g + ":search?k=1", data=enrolled["bob"][0], headers={"content-type": "image/png"})
    assert exact.json()["matches"] == [{"identity": "bob", "score": pytest.approx(1.0, abs=1e-5)}]
    assert metric(url, "imgrec_task_items", item="gallery_embeddings") == 6
    assert metric(url, "imgrec_task_items", item="gallery_identities") == 3
    assert metric(url, "imgrec_task_seconds_count", work="gallery_search") == 2
    # the bad inputs: no identity, no image, an unknown identity to delete
    for r, message in [(requests.post(g, files={"image": query}), "needs an identity"),
                       (requests.post(g, json={"identity": "dee"}), "missing image field 'image'"),
                       (requests.post(g + ":search", json={"k": 3}), "missing image field 'image'"),
                       (requests.post(g + ":search", json={"image": b64(query), "k": 0}), "k must be an integer"),
                       (requests.delete(g + "/nobody"), "'nobody' is not in the gallery")]:
      assert r.status_code in (400, 404) and message in r.json()["error"], r.text
    assert requests.get(g).json()["gallery_size"] == 6  # nothing changed
    r = requests.delete(g + "/ann")
    assert r.json() == {"identity": "ann", "deleted": 2, "gallery_size": 4}
    assert "ann" not in [m["identity"] for m in requests.post(g + ":search", json={"image": b64(query)}).json()[
        "matches"]]
  # on disk: embeddings and names only, and a restarted server finds them
  with np.load(path, allow_pickle=False) as f:
    assert sorted(f.files) == ["embeddings", "identities"] and f["embeddings"].shape == (4, 16)
  # ... and two names served from the one run share its gallery: a change through one is seen through the other
  with running_server([("faces", None, workdir), ("twin", None, workdir)], app_lib.Options(**OPTIONS)) as (url, _):
    g, twin = url + "/v1/models/faces/gallery", url + "/v1/models/twin/gallery"
    assert requests.get(g).json() == {"identities": {"bob": 2, "cy": 2}, "gallery_size": 4}
    r = requests.post(g + ":search?k=1", data=enrolled["bob"][0], headers={"content-type": "image/png"})
    assert r.json()["matches"][0]["identity"] == "bob"
    assert metric(url, "imgrec_task_items", item="gallery_embeddings", model="faces:6") == 4
    assert requests.delete(twin + "/bob").json()["gallery_size"] == 2
    assert requests.post(g, json={"identity": "dee", "image": b64(query)}).json()["gallery_size"] == 3
    assert requests.get(twin).json()["identities"] == {"cy": 2, "dee": 1}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # at once, through both names: every one is kept
      done = list(pool.map(lambda i: requests.post((g, twin)[i % 2], json={"identity": f"p{i}", "image": b64(
          enrolled["ann"][i % 2])}).status_code, range(6)))
    assert done == [200] * 6 and len(requests.get(twin).json()["identities"]) == 8
    r = requests.delete(g + "/%20")
    assert r.status_code == 400 and "name the identity to delete" in r.json()["error"]
  with np.load(path, allow_pickle=False) as f:
    assert sorted(set(f["identities"])) == ["cy", "dee"] + [f"p{i}" for i in range(6)]


def test_gallery_changes_need_an_admin_key_and_a_run_without_calibration_a_threshold(run, tmp_path):
  workdir = copy_of(run, tmp_path)
  path = os.path.join(workdir, "metrics.jsonl")  # the run's evaluations left out: no calibrated threshold
  with open(path) as f:
    kept = [line for line in f if "threshold" not in json.loads(line)]
  with open(path, "w") as f:
    f.writelines(kept)
  image = images_of(run, 3)[0]
  keys = dict(api_keys=(KEY,), admin_keys=(ADMIN,))
  with running_server([("faces", None, workdir)], app_lib.Options(**OPTIONS, **keys)) as (url, _):
    v = url + "/v1/models/faces:verify"
    r = requests.post(v, files={"image1": image, "image2": image}, headers=H)
    assert r.status_code == 400 and "has no calibrated threshold for its checkpoint of step 6" in r.json()["error"]
    r = requests.post(v, files={"image1": image, "image2": image}, data={"threshold": "0.5"}, headers=H)
    assert r.json()["same"] is True and r.json()["threshold"] == 0.5
    g = url + "/v1/models/faces/gallery"
    enroll = dict(data={"identity": "eve"}, files={"image": image})
    r = requests.post(g, **enroll)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    for key in (KEY, "wrong"):  # an inference key, or none of the server's
      r = requests.post(g, **enroll, headers={"X-API-Key": key})
      assert r.status_code == 403 and "POST /v1/models/faces/gallery needs an admin key" in r.json()["error"]
      assert requests.delete(g + "/eve", headers={"X-API-Key": key}).status_code == 403
    assert requests.get(g, headers=H).json()["gallery_size"] == 0  # nothing was enrolled
    assert requests.post(g, **enroll, headers=A).status_code == 200
    r = requests.post(g + ":search", files={"image": image}, headers=H)  # search: an inference key
    assert r.json()["matches"] == [{"identity": "eve", "score": pytest.approx(1.0, abs=1e-5)}]
    assert requests.delete(g + "/eve", headers=H).status_code == 403
    assert requests.delete(g + "/eve", headers=A).json()["deleted"] == 1
  # API keys without admin keys: the gallery cannot change, and the refusal says what to start the server with
  with running_server([("faces", None, workdir)], app_lib.Options(**OPTIONS, api_keys=(KEY,))) as (url, _):
    r = requests.post(url + "/v1/models/faces/versions/6/gallery", **enroll, headers=H)
    assert r.status_code == 403 and "start the server with --admin-keys-file" in r.json()["error"]
