"""Serving and export of a detection run: a real server on 127.0.0.1 (OIP v2 over HTTP and gRPC with
tritonclient, TF-Serving :predict, image uploads, the web page in a real browser) and `imgrec export`, all
checked against the detection task's own make_predict on the same images.

One tiny FCOS workdir serves every test. It is written from initialised weights, not trained: what is checked
here is that every path answers exactly what make_predict gives, which any weights show, and an untrained FCOS
scores every point near its prior (about 0.07, over the 0.05 threshold), so every image has detections.
"""
import base64

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th

from imgrec import cli, config, export, parallel, state as train_state, steps, workdir as wd
from imgrec.data import preprocess
from imgrec.serve import app as app_lib, page, rest
from imgrec.tasks import detection
from tests.test_serve import H, KEY, browser, needs_browser, png, running_server, upload_on_page

K = 20  # detections per image
SIZE = 64  # the model's input: digit_boxes canvases, letterboxed to 64
NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def detection_config():
  c = config.defaults()
  c.task = "detection"
  c.data.source = "digit_boxes"
  c.data.digit_boxes_train, c.data.digit_boxes_test, c.data.digit_boxes_size = 8, 8, SIZE
  c.data.max_boxes, c.data.val_fraction = 8, 0.0
  c.model.name = "tiny"
  c.model.kwargs = ml_collections.ConfigDict()
  c.detection.fpn_channels, c.detection.head_convs, c.detection.levels = 16, 1, (3, 4, 5)
  c.detection.pre_nms_topk, c.detection.num_detections = 100, K
  c.batch_size, c.select_metric = 8, "AP"
  return c


@pytest.fixture(scope="module")
def det(tmp_path_factory):
  """(workdir, 4 test images at the model's size, make_predict's outputs of them, the restored run)."""
  workdir = str(tmp_path_factory.mktemp("detection_serve"))
  cfg = detection_config()
  ds = detection.open_data(cfg)
  info = wd.data_info(cfg, ds)
  built = wd.build(cfg, info, parallel.make_mesh())
  # An RBG key: this model's initialisers compile in ~4 s with it, ~20 s with the default threefry.
  init = jax.jit(lambda key: built.model.init(key, jnp.zeros((1, SIZE, SIZE, 3)), train=False))
  variables = init(jax.random.key(0, impl="rbg"))
  params = variables["params"]
  state = train_state.TrainState(step=jnp.int32(3), params=params, batch_stats=variables["batch_stats"],
                                 opt_state=built.tx.init(params), rng=jnp.zeros(2, jnp.uint32), ema_params={},
                                 ema_batch_stats={})
  wd.write(workdir, cfg, info, state)
  run = wd.restore(workdir, params_only=True)
  test = ds.split("test")
  images = np.stack([test.example(i, False, None)["image"] for i in range(4)])
  predict = jax.jit(detection.make_predict(run.model, info["mean"], info["std"]))
  expected = {k: np.asarray(v) for k, v in predict(run.variables, images).items()}
  assert expected["num_detections"].min() > 0  # the comparisons below compare boxes
  return workdir, images, expected, run, predict


@pytest.fixture(scope="module")
def server(det):
  options = app_lib.Options(batch_sizes=(4,), max_delay_ms=2, timeout_s=20, api_keys=(KEY,),
                            grpc_address="127.0.0.1:0")
  with running_server([("det", None, det[0])], options) as (url, gate):
    yield url, gate.app.state.grpc_port


def assert_outputs(got, expected):
  """Every TF Object Detection API output: float32, and what make_predict gave (the same program and batch
  size, so the same numbers)."""
  for name in NAMES:
    assert got[name].dtype == np.float32, name
    np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_oip_http_and_grpc_infer_and_metadata(server, det):
  url, grpc_port = server
  _, images, expected, run, _ = det
  http = th.InferenceServerClient(url[len("http://"):])
  meta = http.get_model_metadata("det", headers=dict(H))
  assert meta["outputs"] == [{"name": "detection_boxes", "datatype": "FP32", "shape": [-1, K, 4]},
                             {"name": "detection_scores", "datatype": "FP32", "shape": [-1, K]},
                             {"name": "detection_classes", "datatype": "FP32", "shape": [-1, K]},
                             {"name": "num_detections", "datatype": "FP32", "shape": [-1]}]
  assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}]
  for binary in (True, False):
    inp = th.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    r = http.infer("det", [inp], outputs=[th.InferRequestedOutput(n, binary_data=binary) for n in NAMES],
                   headers=dict(H))
    got = {n: r.as_numpy(n) for n in NAMES}
    assert got["detection_boxes"].shape == (4, K, 4) and got["num_detections"].shape == (4,)
    assert_outputs(got, expected)
  with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
    gmeta = c.get_model_metadata("det", headers={"x-api-key": KEY})
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in gmeta.outputs] == \
        meta["outputs"]
    inp = tg.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    r = c.infer("det", [inp], headers={"x-api-key": KEY})
    assert_outputs({n: r.as_numpy(n) for n in NAMES}, expected)
  # FP32 input (normalised by the client) runs the same detector and decoding, from floats computed here
  x = np.asarray(steps.normalize(images, run.info["mean"], run.info["std"]))
  inp = th.InferInput("images", list(x.shape), "FP32")
  inp.set_data_from_numpy(x, binary_data=True)
  r = http.infer("det", [inp], headers=dict(H))
  np.testing.assert_array_equal(r.as_numpy("num_detections"), expected["num_detections"])
  np.testing.assert_allclose(r.as_numpy("detection_scores"), expected["detection_scores"], atol=1e-4)
  # one image alone, padded to the compiled batch of 4: its own outputs
  inp = th.InferInput("images", [1, SIZE, SIZE, 3], "UINT8")
  inp.set_data_from_numpy(images[2:3], binary_data=True)
  r = http.infer("det", [inp], headers=dict(H))
  assert_outputs({n: r.as_numpy(n) for n in NAMES}, {n: v[2:3] for n, v in expected.items()})
  asked = {"inputs": [{"name": "images", "shape": [1, SIZE, SIZE, 3], "datatype": "UINT8",
                       "data": images[0].ravel().tolist()}],
           "outputs": [{"name": "detection_scores", "parameters": {"classification": 2}}]}
  r = requests.post(url + "/v2/models/det/infer", json=asked, headers=H)
  assert r.status_code == 400 and "not a classifier" in r.json()["error"]


def test_tf_serving_predict_and_classify(server, det):
  url, _ = server
  _, images, expected, _, _ = det
  r = requests.post(url + "/v1/models/det:predict", json={"instances": images.tolist()}, headers=H)
  assert r.status_code == 200, r.text
  rows = r.json()["predictions"]
  assert len(rows) == 4 and all(sorted(row) == sorted(NAMES) for row in rows)
  assert_outputs({n: np.array([row[n] for row in rows], np.float32) for n in NAMES}, expected)
  b64 = [{"b64": base64.b64encode(png(im)).decode()} for im in images[:2]]
  r = requests.post(url + "/v1/models/det:predict", json={"inputs": b64}, headers=H)  # columnar
  cols = r.json()["outputs"]
  assert_outputs({n: np.array(cols[n], np.float32) for n in NAMES}, {n: v[:2] for n, v in expected.items()})
  for body in ({"json": {"instances": b64}}, {"data": png(images[0])}):
    r = requests.post(url + "/v1/models/det:classify", headers=H, **body)
    assert r.status_code == 400, r.text
    assert "'det' is a detection model" in r.json()["error"] and "/v1/models/det:predict" in r.json()["error"]


def source_image(det):
  """A 128x96 PNG (a test canvas scaled 2x, its bottom quarter cut): an upload at another size and aspect than
  the model's 64x64 input, so the letterbox scales it by 1/2 and pads 16 rows below."""
  image = np.kron(det[1][1], np.ones((2, 2, 1), np.uint8))[:96]
  return png(image)


def by_hand(det, data):
  """The upload's detections computed here: the model on the letterboxed image (the run's eval preprocessing),
  boxes from [0, 1] to input pixels (x 64), then to the upload's (x 2: the letterbox halved it, at the top
  left), clipped to 128x96; boxes wholly in the padding left out."""
  _, _, _, run, predict = det
  letterboxed = preprocess.for_model(data, run.info["pp_eval"], (SIZE, SIZE, 3))
  assert not letterboxed[48:].any() and letterboxed[:48].any()  # the image on top, 16 padded rows
  out = {k: np.asarray(v)[0] for k, v in predict(run.variables, np.repeat(letterboxed[None], 4, 0)).items()}
  n = int(out["num_detections"])
  ymin, xmin, ymax, xmax = out["detection_boxes"][:n].T * SIZE * 2
  boxes = np.stack([np.clip(xmin, 0, 128), np.clip(ymin, 0, 96), np.clip(xmax, 0, 128), np.clip(ymax, 0, 96)], 1)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return boxes[keep], out["detection_scores"][:n][keep], out["detection_classes"][:n][keep].astype(int) - 1


def test_upload_answers_in_the_uploads_own_pixels(server, det):
  url, _ = server
  data = source_image(det)
  boxes, scores, classes = by_hand(det, data)
  assert len(boxes) and boxes[:, 3].max() > 48  # boxes reach past the letterbox's 48 rows: the map was applied
  raw = requests.post(url + "/v1/models/det:predict", data=data, headers={**H, "Content-Type": "image/png"})
  multipart = requests.post(url + "/v1/models/det:predict?k=3", files={"image": ("c.png", data, "image/png")},
                            headers=H)
  assert raw.status_code == 200 and multipart.status_code == 200, (raw.text, multipart.text)
  out = raw.json()
  assert (out["model"], out["version"], out["width"], out["height"]) == ("det", "3", 128, 96)
  got = out["detections"]
  assert len(got) == len(boxes)
  np.testing.assert_allclose([d["box"] for d in got], boxes, atol=1e-3)
  np.testing.assert_allclose([d["score"] for d in got], scores, atol=1e-6)
  assert [d["class"] for d in got] == list(classes) and [d["label"] for d in got] == [str(c) for c in classes]
  assert multipart.json()["detections"] == got[:3]
  r = requests.post(url + "/v1/models/det:predict?k=0", data=data, headers=H)
  assert r.status_code == 400 and "k must be a positive integer" in r.json()["error"]


@needs_browser
def test_web_page_draws_the_boxes(server, det, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  url, _ = server
  path = tmp_path / "canvas.png"
  path.write_bytes(source_image(det))
  expected = requests.post(url + "/v1/models/det:predict", data=path.read_bytes(), headers=H).json()["detections"]
  with browser(tmp_path) as driver:
    upload_on_page(driver, url, path)
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "canvas").get_attribute("data-drawn"))
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
    size = driver.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    # the best box is drawn last: the middle of its bottom edge is the box colour
    x0, _, x1, y1 = expected[0]["box"]
    x, y = int((x0 + x1) / 2), min(int(y1), 95)
    pixel = driver.execute_script(
        f"return Array.from(document.getElementById('canvas').getContext('2d').getImageData({x}, {y}, 1, 1).data);")
    driver.save_screenshot(str(tmp_path / "page.png"))
  assert labels == [d["label"] for d in expected] and size == [128, 96]
  color = [int(page.BOX_COLOR[i:i + 2], 16) for i in (1, 3, 5)]
  assert pixel == [*color, 255], pixel


def test_export_includes_decoding(det, tmp_path):
  workdir, images, expected, _, _ = det
  artifact = str(tmp_path / "det.zip")
  assert cli.main(["export", "--workdir", workdir, "--out", artifact, "--platforms", "cpu"]) == 0
  predictor = export.load(artifact)
  assert predictor.meta["task"] == "detection"
  assert [(o["name"], o["shape"]) for o in predictor.meta["outputs"]] == [  # the task's description, in its order
      ("detection_boxes", ["b", K, 4]), ("detection_scores", ["b", K]), ("detection_classes", ["b", K]),
      ("num_detections", ["b"])]
  got = {k: np.asarray(v) for k, v in predictor(images).items()}
  assert_outputs(got, expected)
  one = {k: np.asarray(v) for k, v in predictor(images[1:2]).items()}  # the batch is symbolic
  np.testing.assert_allclose(one["detection_scores"], expected["detection_scores"][1:2], atol=1e-5)


def test_protocol_pieces():
  """TF-Serving's reply shape for one output and several; what counts as an upload on :predict."""
  t = {"a": np.zeros((2, 3), np.float32), "b": np.ones(2, np.float32)}
  assert rest.tfs_response(t, ("a",), False) == {"predictions": [[0, 0, 0], [0, 0, 0]]}
  assert rest.tfs_response(t, ("a", "b"), True) == {"outputs": {"a": [[0, 0, 0]] * 2, "b": [1, 1]}}
  assert rest.tfs_response(t, ("a", "b"), False)["predictions"][1] == {"a": [0, 0, 0], "b": 1}
  assert rest.is_upload("application/x-www-form-urlencoded", b"\x89PNG\r\n\x1a\nrest")
  assert rest.is_upload("multipart/form-data", b"--x") and not rest.is_upload("", b'{"instances": []}')
