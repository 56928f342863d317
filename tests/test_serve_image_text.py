"""Open-vocabulary serving against the real thing: a random-weight Hugging Face SiglipModel (small config, saved with
save_pretrained, its SentencePiece tokenizer trained here) imported with `imgrec import` and served as it is, and as
an `imgrec export` artifact carrying both towers. Labels chosen at request time score like SiglipModel's
logits_per_image on the same prompts, over OIP v2 HTTP (tritonclient) and gRPC, TF-Serving JSON, an upload and
Hugging Face's zero-shot JSON; the text-embedding cache's hits and misses show in /metrics."""
import base64
import json
import os
import re
import shutil

import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th

from imgrec import checkpoint_import, export
from imgrec.serve import app as app_lib
from tests import text_helpers
from tests.test_serve import browser, needs_browser, png, running_server
from tests.test_two_tower_import import siglip_reference

ref = pytest.importorskip("tests.torch_reference")
torch, transformers = ref.torch, ref.transformers

LABELS = ["a cat", "Dog!", "café au lait", "7 red boxes"]
TEMPLATE = "a photo of {}."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(the Hugging Face model, its tokenizer, the import folder, an export of it, an import without tokenizer)."""
  root = tmp_path_factory.mktemp("zs")
  model = siglip_reference()
  hf = root / "hf"
  hf.mkdir()
  text_helpers.sentencepiece_model(str(hf))
  model.save_pretrained(hf)
  tok = transformers.SiglipTokenizer(vocab_file=str(hf / "spiece.model"), model_max_length=12)
  tok.save_pretrained(hf)
  checkpoint_import.import_checkpoint(str(hf), str(root / "imp"))
  export.export_workdir(str(root / "imp"), str(root / "zs.zip"), platforms=("cpu",))
  bare = root / "bare"  # the same weights, the tokenizer left behind
  shutil.copytree(hf, root / "hf_bare", ignore=shutil.ignore_patterns("spiece.model", "tokenizer*", "special*"))
  checkpoint_import.import_checkpoint(str(root / "hf_bare"), str(bare))
  return model, tok, str(root / "imp"), str(root / "zs.zip"), str(bare)


@pytest.fixture(scope="module")
def server(folders):
  _, _, imp, artifact, bare = folders
  options = app_lib.Options(batch_sizes=(1, 4), max_delay_ms=2, timeout_s=30, grpc_address="127.0.0.1:0")
  with running_server([("zs", None, imp), ("zsx", None, artifact), ("bare", None, bare)], options) as (url, gate):
    yield url, gate.app.state.grpc_port


def images(n=2, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def hf_scores(model, tok, x, labels, template):
  """SiglipModel's logits and sigmoid probabilities [B, N] of uint8 images (SigLIP's [-1, 1] pixels) against the
  labels written into the template, padded to the text length as SigLIP was trained."""
  pixels = torch.from_numpy((x.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
  ids = tok([template.format(c) for c in labels], padding="max_length", max_length=12, truncation=True).input_ids
  with torch.no_grad():
    out = model(pixel_values=pixels, input_ids=torch.tensor(ids))
  logits = out.logits_per_image.numpy()
  return logits, 1 / (1 + np.exp(-logits)), out.text_embeds.numpy()


def labels_input(module, labels):
  t = module.InferInput("labels", [len(labels)], "BYTES")
  t.set_data_from_numpy(np.array([s.encode() for s in labels], dtype=object))
  return t


def events(url, model):
  text = requests.get(url + "/metrics").text
  found = {}
  for event in ("text_cache_hit", "text_cache_miss"):
    m = re.search(rf'imgrec_task_events_total{{event="{event}",model="{model}:[0-9]+"}} ([0-9.e+]+)', text)
    found[event] = float(m.group(1)) if m else 0.0
  return found


@pytest.mark.parametrize("name", ["zs", "zsx"])
def test_labels_at_request_time_score_like_siglip(server, folders, name):
  """OIP v2 over HTTP and gRPC (tritonclient), imported folder and export artifact: logits and probabilities
  against request labels equal SiglipModel's; the second identical request is served from the cache."""
  model, tok, *_ = folders
  url, grpc_port = server
  x = images()
  want_logits, want_probs, _ = hf_scores(model, tok, x, LABELS, TEMPLATE)
  c = th.InferenceServerClient(url.removeprefix("http://"))
  inp = th.InferInput("images", list(x.shape), "UINT8")
  inp.set_data_from_numpy(x, binary_data=True)
  before = events(url, name)
  r = c.infer(name, [inp, labels_input(th, LABELS)], parameters={"template": TEMPLATE})
  np.testing.assert_allclose(r.as_numpy("logits"), want_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(r.as_numpy("probabilities"), want_probs, rtol=1e-4, atol=1e-5)
  assert r.as_numpy("image_embeds").shape == (2, 32)
  assert r.get_response()["parameters"]["template"] == TEMPLATE
  after = events(url, name)
  assert after["text_cache_miss"] - before["text_cache_miss"] == len(LABELS)
  g = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
  gin = tg.InferInput("images", list(x.shape), "UINT8")
  gin.set_data_from_numpy(x)
  r = g.infer(name, [gin, labels_input(tg, LABELS)], parameters={"template": TEMPLATE})
  np.testing.assert_allclose(r.as_numpy("logits"), want_logits, rtol=1e-4, atol=1e-4)
  again = events(url, name)
  assert again["text_cache_hit"] - after["text_cache_hit"] == len(LABELS)
  assert again["text_cache_miss"] == after["text_cache_miss"]


def test_default_template_text_only_and_tf_serving(server, folders):
  model, tok, *_ = folders
  url, _ = server
  x = images(1, seed=3)
  default = json.load(open(os.path.join(folders[2], "text.json")))["template"]
  body = {"inputs": {"images": x.tolist(), "labels": LABELS}}
  got = requests.post(url + "/v1/models/zs:predict", json=body).json()
  want_logits, _, _ = hf_scores(model, tok, x, LABELS, default)
  np.testing.assert_allclose(got["outputs"]["logits"], want_logits, rtol=1e-4, atol=1e-4)
  assert got["parameters"]["template"] == default
  # labels alone: their text embeddings, the labels as given unless a template is named
  _, _, want_text = hf_scores(model, tok, x, LABELS, "{}")
  r = requests.post(url + "/v2/models/zs/infer", json={"inputs": [
      {"name": "labels", "datatype": "BYTES", "shape": [4], "data": LABELS}]}).json()
  (out,) = r["outputs"]
  assert out["name"] == "text_embeds" and out["shape"] == [4, 32]
  np.testing.assert_allclose(np.reshape(out["data"], (4, 32)), want_text, rtol=1e-4, atol=1e-5)
  tfs = requests.post(url + "/v1/models/zs:predict", json={"inputs": {"labels": LABELS}}).json()
  np.testing.assert_allclose(tfs["outputs"], want_text, rtol=1e-4, atol=1e-5)


def test_upload_and_hugging_face_zero_shot_json(server, folders):
  model, tok, *_ = folders
  url, _ = server
  x = images(1, seed=5)
  _, want, _ = hf_scores(model, tok, x, LABELS, "This is a photo of {}.")
  body = {"inputs": base64.b64encode(png(x[0])).decode(),
          "parameters": {"candidate_labels": LABELS, "hypothesis_template": "This is a photo of {}."}}
  got = requests.post(url + "/v1/models/zs:predict", json=body).json()
  order = np.argsort(-want[0], kind="stable")
  assert [g["label"] for g in got] == [LABELS[j] for j in order]
  np.testing.assert_allclose([g["score"] for g in got], want[0][order], rtol=1e-4, atol=1e-5)
  # the same as an upload with the labels as fields: the page's bars, top 2
  r = requests.post(url + "/v1/models/zs:predict?k=2", files={"image": ("x.png", png(x[0]), "image/png")},
                    data={"labels": LABELS, "template": "This is a photo of {}."}).json()
  assert [p["label"] for p in r["predictions"]] == [LABELS[j] for j in order[:2]]
  assert r["dim"] == 32


def test_bad_requests_are_one_clear_line(server):
  url, _ = server
  x = images(1)
  v2 = lambda name, inputs, **kw: requests.post(url + f"/v2/models/{name}/infer", json={"inputs": inputs, **kw})
  img = {"name": "images", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}
  r = v2("zs", [img, {"name": "labels", "datatype": "BYTES", "shape": [0], "data": []}])
  assert r.status_code == 400 and "'labels' is empty" in r.json()["error"]
  r = v2("zs", [img, {"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["cat"]}],
         parameters={"template": "a photo"})
  assert r.status_code == 400 and "exactly one '{}'" in r.json()["error"]
  long = "an extremely long label that goes on " * 3
  r = v2("zs", [img, {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["cat", long]}],
         parameters={"template": "{}"})
  assert r.status_code == 200 and r.json()["parameters"]["truncated_labels"] == [long]
  r = requests.post(url + "/v1/models/zs:predict", json={"inputs": "not base64!", "parameters": {}})
  assert r.status_code == 400 and "base64" in r.json()["error"]
  r = requests.post(url + "/v1/models/zs:predict", json={"inputs": base64.b64encode(png(x[0])).decode(),
                                                         "parameters": {"candidate_label": ["cat"]}})
  assert r.status_code == 400 and "candidate_labels" in r.json()["error"]
  r = v2("zs", [img], outputs=[{"name": "logits"}])
  assert r.status_code == 400 and "'logits' is not answered" in r.json()["error"]
  # an import whose tokenizer was left behind: image embeddings serve, labels are refused naming why
  r = v2("bare", [img])
  assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["image_embeds"]
  r = v2("bare", [img, {"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["cat"]}])
  assert r.status_code == 400 and "no tokenizer" in r.json()["error"] and "text.json" in r.json()["error"]


def test_metadata_names_the_labels_input(server):
  url, _ = server
  meta = requests.get(url + "/v2/models/zs").json()
  assert {"name": "labels", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
  assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"image_embeds": [-1, 32], "logits": [-1, -1],
                                                              "probabilities": [-1, -1], "text_embeds": [-1, 32]}


@needs_browser
def test_web_page_scores_typed_labels(server, tmp_path):
  """The page's labels box: the upload goes with them, and their scores come back as bars, best first."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select, WebDriverWait
  url, _ = server
  path = tmp_path / "x.png"
  path.write_bytes(png(images(1, seed=7)[0]))
  want = requests.post(url + "/v1/models/zs:predict", data=path.read_bytes(), params={"labels": LABELS}).json()
  with browser(tmp_path) as driver:
    driver.get(url + "/")
    Select(driver.find_element(By.ID, "model")).select_by_value("zs")
    driver.find_element(By.ID, "labels").send_keys(", ".join(LABELS))
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == len(LABELS))
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
  assert shown == [p["label"] for p in want["predictions"]] and sorted(shown) == sorted(LABELS)


def test_import_folder_evaluates_zero_shot_directly(folders, tmp_path):
  """The same import folder, no training: zero-shot on digits' test split through `imgrec eval`."""
  from imgrec import cli
  imp = folders[2]
  assert cli.main(["eval", "--workdir", imp, "--config.data.source=digits", "--json"]) == 0
  summary = json.load(open(os.path.join(imp, "report", "metrics.json")))
  assert summary["examples"] == 359 and 0 <= summary["zeroshot_accuracy"] <= 1
  assert summary["class_names"] == [str(i) for i in range(10)]
  assert os.path.isfile(os.path.join(imp, "report", "confusion.png"))
