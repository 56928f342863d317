"""The server carries any tensor: BYTES inputs and outputs over OIP v2 JSON, its binary extension and gRPC (with
tritonclient as it is), TF-Serving's {"b64": ...}; an upload answered as a PNG when the client's Accept asks for
one; routes a task adds; the page drawing a class-map overlay.

The served task is classification with what a later task needs added (TASK below): an input beside the images
("labels", BYTES [N], optional), two BYTES outputs (a text label and a PNG, which is not text), an upload reply
shaped like segmentation's, a PNG for the upload, and two routes of its own. A real uvicorn on 127.0.0.1 serves
the trained digits workdir with it.
"""
import base64
import io
import types

import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th
from PIL import Image
from starlette.exceptions import HTTPException

from imgrec import tasks
from imgrec.serve import app as app_lib, grpc_service, protocol, rest, routes
from imgrec.tasks import classification
from imgrec.tasks.contract import Output
from tests.test_serve import browser, needs_browser, png, running_server, upload_on_page

KEY = "k-3f9a2c41d7"  # upload_on_page types test_serve's key
H = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------- the test task

def probs_png(probs):
  """One example's probabilities as a 1 x K greyscale PNG (bytes that are not UTF-8 text)."""
  buf = io.BytesIO()
  Image.fromarray(np.round(probs * 255).astype(np.uint8)[None]).save(buf, "PNG")
  return buf.getvalue()


def postprocess(outputs, extras, context=None):
  out = {name: np.asarray(value) for name, value in outputs.items()}
  labels = [b.decode() for b in extras.get("labels", np.array([b"no labels"], object)).reshape(-1)]
  top = out["probabilities"].argmax(-1)
  out["top_label"] = protocol.bytes_array([labels[j % len(labels)].encode() for j in top], [len(top)])
  out["probs_png"] = protocol.bytes_array([probs_png(p) for p in out["probabilities"]], [len(top)])
  return out, {}, None


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """Segmentation's reply shape: the left half of the upload is the top class, the right half none (255)."""
  w, h = source_wh
  top = int(outputs["probabilities"].argmax())
  mask = np.full((h, w), 255, np.uint8)
  mask[:, :w // 2] = top
  buf = io.BytesIO()
  Image.fromarray(mask, "L").save(buf, "PNG")
  return {"width": w, "height": h, "classes": list(class_names), "counts": {class_names[top]: h * (w // 2)},
          "mask_png": base64.b64encode(buf.getvalue()).decode(), "top_label": outputs["top_label"].decode()}


async def labels_route(request, served):
  return {"model": served.name, "version": str(served.version), "labels": list(served.spec.class_names)}


async def top_route(request, served):
  if request.query_params.get("fail"):
    raise HTTPException(409, "asked to fail")
  image, _, _ = await served.read_image(await request.body())
  out = await served.infer(image[None], "uint8")
  return {"top": served.spec.class_names[int(out["probabilities"][0].argmax())]}


TASK = types.SimpleNamespace(**{k: getattr(classification, k) for k in dir(classification) if not k.startswith("_")})
TASK.INPUTS = (("labels", "BYTES", ("N",), False),)
TASK.OUTPUTS = (*classification.OUTPUTS, Output("top_label", "BYTES", ()), Output("probs_png", "BYTES", ()))
TASK.postprocess, TASK.upload_result = postprocess, upload_result
TASK.upload_png = lambda result: base64.b64decode(result["mask_png"])
TASK.routes = lambda: [("GET", ":labels", labels_route), ("POST", ":top", top_route)]
OTHER = types.SimpleNamespace(NAME="other", settings=lambda: {}, routes=lambda: [("GET", "/gallery", labels_route)])


@pytest.fixture(scope="module")
def server(trained_workdir):
  options = app_lib.Options(batch_sizes=(1, 4), max_delay_ms=2, timeout_s=20, api_keys=(KEY,),
                            grpc_address="127.0.0.1:0")
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(tasks.TASKS, classification.NAME, TASK)
    mp.setitem(tasks.TASKS, OTHER.NAME, OTHER)
    with running_server([("digits", None, trained_workdir)], options) as (url, gate):
      yield url, gate.app.state.grpc_port


def expected(probs, labels):
  return [labels[j % len(labels)] for j in probs.argmax(-1)]


def assert_png_of(data, probs):
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)))[0], np.round(probs * 255))


# ---------------------------------------------------------------- OIP v2

def test_bytes_tensors_over_oip_http_json_and_binary(server, reference):
  url, _ = server
  images = reference[0][:3]
  labels = ["zero", "één", "два"]  # not ASCII: the strings go through as UTF-8
  c = th.InferenceServerClient(url[len("http://"):])
  meta = c.get_model_metadata("digits", headers=dict(H))
  assert meta["inputs"][1] == {"name": "labels", "datatype": "BYTES", "shape": [-1]}
  assert meta["outputs"][2:] == [{"name": "top_label", "datatype": "BYTES", "shape": [-1]},
                                 {"name": "probs_png", "datatype": "BYTES", "shape": [-1]}]
  for binary in (True, False):
    inp = th.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    lab = th.InferInput("labels", [3], "BYTES")
    lab.set_data_from_numpy(np.array([s.encode() for s in labels], object), binary_data=binary)
    outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "top_label", "probs_png")]
    r = c.infer("digits", [inp, lab], outputs=outs, headers=dict(H))
    probs, top, pngs = (r.as_numpy(n) for n in ("probabilities", "top_label", "probs_png"))
    assert top.shape == (3,) and pngs.shape == (3,)
    if binary:  # length-prefixed elements: bytes
      assert [t.decode() for t in top] == expected(probs, labels)
      encoded = pngs
    else:  # JSON strings: text as itself, a PNG as base64 (the output says so)
      assert list(top) == expected(probs, labels)
      assert r.get_output("probs_png")["parameters"] == {"content_encoding": "base64"}
      encoded = [base64.b64decode(s) for s in pngs]
    for data, p in zip(encoded, probs):
      assert_png_of(data, p)
  # without the optional input, and with a bad one
  r = requests.post(url + "/v2/models/digits/infer", headers=H, json={"inputs": [
      {"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": images[0].ravel().tolist()}],
      "outputs": [{"name": "top_label"}]})
  assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["no labels"]
  bad = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": [0] * 64},
                    {"name": "labels", "datatype": "INT32", "shape": [1], "data": [3]}]}
  r = requests.post(url + "/v2/models/digits/infer", headers=H, json=bad)
  assert r.status_code == 400 and "'labels': datatype 'INT32'" in r.json()["error"]
  bad["inputs"][1] = {"name": "labels", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}
  r = requests.post(url + "/v2/models/digits/infer", headers=H, json=bad)
  assert r.status_code == 400 and "does not match [-1]" in r.json()["error"]


def test_bytes_tensors_over_grpc(server, reference):
  _, port = server
  images = reference[0][:2]
  labels = ["a", "b", "c"]
  with tg.InferenceServerClient(f"127.0.0.1:{port}") as c:
    meta = c.get_model_metadata("digits", headers={"x-api-key": KEY})
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs][1] == ("labels", "BYTES", [-1])
    inp = tg.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    lab = tg.InferInput("labels", [3], "BYTES")
    lab.set_data_from_numpy(np.array([s.encode() for s in labels], object))
    r = c.infer("digits", [inp, lab], headers={"x-api-key": KEY})
    probs = r.as_numpy("probabilities")
    assert [t.decode() for t in r.as_numpy("top_label")] == expected(probs, labels)
    for data, p in zip(r.as_numpy("probs_png"), probs):
      assert_png_of(data, p)


# ---------------------------------------------------------------- TF-Serving

def test_tf_serving_bytes_outputs_and_extra_inputs(server, reference):
  url, _ = server
  images = reference[0][:2]
  body = {"inputs": {"images": images.tolist(), "labels": ["x", {"b64": base64.b64encode(b"y").decode()}]}}
  r = requests.post(url + "/v1/models/digits:predict", headers=H, json=body)
  assert r.status_code == 200, r.text
  out = r.json()["outputs"]
  probs = np.array(out["probabilities"])
  assert out["top_label"] == expected(probs, ["x", "y"])
  for item, p in zip(out["probs_png"], probs):  # not text: {"b64": ...}
    assert set(item) == {"b64"}
    assert_png_of(base64.b64decode(item["b64"]), p)
  r = requests.post(url + "/v1/models/digits:predict", headers=H,
                    json={"instances": [{"images": images[0].tolist(), "labels": ["x"]}]})
  assert r.status_code == 400 and "columnar" in r.json()["error"]
  rows = requests.post(url + "/v1/models/digits:predict", headers=H, json={"instances": images.tolist()}).json()
  assert rows["predictions"][0]["top_label"] == "no labels" and "b64" in rows["predictions"][0]["probs_png"]
  assert rest.tfs_json("mask_bytes", protocol.bytes_array([b"ab"], [1])) == [{"b64": "YWI="}]


# ---------------------------------------------------------------- uploads: JSON or PNG by Accept

def test_upload_answers_png_or_json_by_accept(server, reference):
  url, _ = server
  image = png(np.kron(reference[0][3], np.ones((3, 5, 1), np.uint8)))  # 40 x 24: the reply is in its pixels
  predict = url + "/v1/models/digits:predict"
  reply = requests.post(predict, data=image, headers=H).json()
  top = reply["classes"].index(*reply["counts"])
  for accept in ("image/png", "image/*", "application/json;q=0.5, image/png", "text/html, image/png;q=0.1"):
    r = requests.post(predict, data=image, headers={**H, "Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", accept
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (24, 40) and (mask[:, :20] == top).all() and (mask[:, 20:] == 255).all()
    assert r.content == base64.b64decode(reply["mask_png"])
  for accept in (None, "*/*", "application/json", "image/png;q=0.2, */*;q=0.5", "image/png;q=0, */*"):
    r = requests.post(predict, data=image, headers={**H, **({"Accept": accept} if accept else {})},
                      params={"labels": [str(i) + "!" for i in range(10)]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", accept
    assert r.json()["top_label"] == f"{top}!" and r.json()["width"] == 40 and r.headers["vary"] == "Accept"
  r = requests.post(predict, data=image, headers={**H, "Accept": "text/html"})
  assert r.status_code == 406 and "image/png" in r.json()["error"] and "application/json" in r.json()["error"]
  r = requests.post(predict, files={"image": ("d.png", image, "image/png")}, data={"labels": ["p", "q"]},
                    headers=H)
  assert r.status_code == 200 and r.json()["top_label"] == "pq"[top % 2]


def test_negotiate():
  offers = ["application/json", "image/png"]
  assert rest.negotiate(None, offers) == "application/json"
  assert rest.negotiate("image/*;q=0.9, application/*;q=0.8", offers) == "image/png"
  assert rest.negotiate("*/*;q=0.1, application/json;q=0", offers) == "image/png"
  assert rest.negotiate("image/png", ["application/json"]) is None
  assert rest.negotiate("image/png;q=abc", offers) is None


# ---------------------------------------------------------------- routes a task adds

def test_task_routes(server, reference):
  url, _ = server
  r = requests.get(url + "/v1/models/digits:labels", headers=H)
  assert r.status_code == 200 and r.json()["labels"] == [str(i) for i in range(10)], r.text
  version = r.json()["version"]
  assert requests.get(url + f"/v1/models/digits/versions/{version}:labels", headers=H).json() == r.json()
  assert requests.get(url + "/v1/models/digits/versions/99:labels", headers=H).status_code == 404
  image = png(reference[0][7])
  r = requests.post(url + "/v1/models/digits:top", data=image, headers=H)
  assert r.status_code == 200 and r.json() == {"top": str(reference[1][7])}
  r = requests.post(url + "/v1/models/digits:top?fail=1", data=image, headers=H)
  assert r.status_code == 409 and r.json() == {"error": "asked to fail"}
  assert requests.get(url + "/v1/models/digits:top", headers=H).status_code == 405
  assert requests.get(url + "/v1/models/digits:labels").status_code == 401  # behind the API key like the rest
  r = requests.get(url + "/v1/models/digits/gallery", headers=H)  # the other task's route
  assert r.status_code == 404 and "is a classification model; it has no GET route /gallery" in r.json()["error"]
  assert requests.get(url + "/v1/models/digits", headers=H).json()["model_version_status"]  # core routes stay
  with pytest.raises(ValueError, match="':predict'"):
    routes.task_handlers([types.SimpleNamespace(NAME="t", routes=lambda: [("POST", ":predict", labels_route)])])


# ---------------------------------------------------------------- the page

@needs_browser
def test_web_page_draws_a_class_map_overlay(server, reference, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  url, _ = server
  path = tmp_path / "digit.png"
  path.write_bytes(png(np.kron(reference[0][2], np.ones((8, 8, 1), np.uint8))))  # 64 x 64
  reply = requests.post(url + "/v1/models/digits:predict", data=path.read_bytes(), headers=H).json()
  (label, count), = reply["counts"].items()
  with browser(tmp_path) as driver:
    upload_on_page(driver, url, path)
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "canvas").get_attribute("data-drawn") == "1")
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
    shares = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .prob")]
    drawn, color = driver.execute_script(
        "const c = document.getElementById('canvas');"
        "return [Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data), "
        f"classColor({reply['classes'].index(label)})];")
    buf = io.BytesIO()  # a mode "P" class map: the page reads its indices back through the palette
    pmode = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pmode.putpalette([10, 20, 30, 40, 50, 60])
    pmode.save(buf, "PNG")
    palette = driver.execute_script(
        f"return Array.from(paletteOf(Uint8Array.from(atob('{base64.b64encode(buf.getvalue()).decode()}'), "
        "(c) => c.charCodeAt(0)))).map((p) => Array.from(p));")
  assert palette == [[10, 20, 30], [40, 50, 60]]
  assert labels == [label] and shares == [f"{100 * count / 64 / 64:.1f}%"]
  drawn = np.array(drawn).reshape(64, 64, 4)[..., :3].astype(float)
  photo = np.kron(reference[0][2], np.ones((8, 8, 1)))[..., 0][..., None].repeat(3, -1)
  np.testing.assert_allclose(drawn[:, 32:], photo[:, 32:], atol=1)  # no class: the photo as it is
  np.testing.assert_allclose(drawn[:, :32], 0.45 * photo[:, :32] + 0.55 * np.array(color), atol=1.5)


def test_bytes_elements_round_trip_whole():
  """Trailing zero bytes and empty elements survive (a fixed-width numpy bytes_ array would drop them)."""
  items = [b"a\x00", b"", b"\x89PNG\x00\x00"]
  arr = protocol.bytes_array(items, [3])
  assert protocol.split_bytes_elements("x", protocol.tensor_bytes(arr, "BYTES")) == items
  assert protocol.text_or_base64([b"ok", "é".encode()]) == (["ok", "é"], False)
  assert protocol.text_or_base64(items)[1] is True
  got = protocol.tensor_from_json("x", "BYTES", [2], [["a", "é"]], 2)
  assert got.dtype == object and list(got) == [b"a", "é".encode()]


def test_grpc_typed_contents_carry_inputs_beside_the_images():
  spec = protocol.ModelSpec((2, 2, 1), ("a", "b"), "", (("p", "FP32", (2,)),),
                            inputs=(protocol.InputSpec("labels", "BYTES", ("N",)),))
  req = grpc_service.MESSAGES["ModelInfer"][0](model_name="m")
  img = req.inputs.add(name="images", datatype="UINT8", shape=[1, 2, 2, 1])
  img.contents.uint_contents.extend([0, 1, 2, 255])
  lab = req.inputs.add(name="labels", datatype="BYTES", shape=[2])
  lab.contents.bytes_contents.extend([b"cat", b"\x00dog"])
  parsed = grpc_service.parse_infer(req, spec, protocol.Limits())
  assert parsed.images.reshape(-1).tolist() == [0, 1, 2, 255] and list(parsed.extras["labels"]) == [b"cat", b"\x00dog"]
  del req.inputs[1]
  with pytest.raises(protocol.RequestError, match=r"also needs the input\(s\) \['labels'\]"):
    grpc_service.parse_infer(req, spec, protocol.Limits())
