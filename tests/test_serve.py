"""The model server against a real uvicorn on 127.0.0.1 (in-process thread; one subprocess for the CLI/SIGTERM test).

One server with an API key serves the trained digits workdir under two names; every client sends the key.
"""
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import requests

from imgrec.serve import app as app_lib, protocol
from imgrec.serve.batcher import Batcher, QueueFull
from tests.helpers import needs_debian

KEY = "k-3f9a2c41d7"
H = {"Authorization": f"Bearer {KEY}"}  # tritonclient adds to the dict it is given: pass dict(H) there
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_ready(url, timeout=90):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
        return
    except requests.ConnectionError:
      pass
    time.sleep(0.1)
  raise AssertionError(f"server at {url} not ready after {timeout} s")


def png(image_hw_c):
  buf = io.BytesIO()
  img = image_hw_c[..., 0] if image_hw_c.shape[-1] == 1 else image_hw_c
  protocol.Image.fromarray(img).save(buf, "PNG")
  return buf.getvalue()


@contextlib.contextmanager
def running_server(models, options):
  """A real uvicorn on 127.0.0.1 (in a thread) serving `create_app(models, options)` -> (url, gate)."""
  import uvicorn
  gate = app_lib.create_app(models, options)
  port = free_port()
  srv = uvicorn.Server(uvicorn.Config(gate, host="127.0.0.1", port=port, log_level="warning", access_log=False))
  thread = threading.Thread(target=srv.run, daemon=True)
  thread.start()
  url = f"http://127.0.0.1:{port}"
  try:
    wait_ready(url)
    yield url, gate
  finally:
    srv.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def server(trained_workdir):
  options = app_lib.Options(batch_sizes=(1, 4, 16), max_delay_ms=2, max_queue=64, timeout_s=20,
                            limits=protocol.Limits(max_body_bytes=1 << 20, max_pixels=1_000_000, max_images=64),
                            api_keys=(KEY, "another-key"))
  with running_server([("digits", None, trained_workdir), ("other", 7, trained_workdir)], options) as s:
    yield s


# ---------------------------------------------------------------- OIP v2 with tritonclient

def test_tritonclient_json_binary_and_classification(server, reference):
  import tritonclient.http as th
  url, _ = server
  images, top1, info = reference
  c = th.InferenceServerClient(url[len("http://"):])
  assert c.is_server_live() and c.is_server_ready()  # health endpoints are open
  assert c.is_model_ready("digits", headers=dict(H)) and c.is_model_ready("other", "7", headers=dict(H))
  meta = c.get_model_metadata("digits", headers=dict(H))
  assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 8, 8, 1]}]
  assert {o["name"] for o in meta["outputs"]} == {"logits", "probabilities"}
  assert c.get_server_metadata(headers=dict(H))["extensions"] == [
      "binary_tensor_data", "classification", "model_repository", "statistics", "model_configuration"]
  normalised = ((images / 255.0 - np.array(info["mean"])) / np.array(info["std"])).astype(np.float32)
  for x, dtype in ((images, "UINT8"), (normalised, "FP32")):
    for binary in (False, True):
      inp = th.InferInput("images", list(x.shape), dtype)
      inp.set_data_from_numpy(x, binary_data=binary)
      outs = [th.InferRequestedOutput("logits", binary_data=binary),
              th.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
      r = c.infer("digits", [inp], outputs=outs, headers=dict(H))
      np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), top1, err_msg=f"{dtype} binary={binary}")
      cls = r.as_numpy("probabilities")
      assert cls.shape == (64, 3)
      first = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in cls[:, 0]]
      assert [int(f[1]) for f in first] == list(top1) and all(f[2] == str(int(f[1])) for f in first)
      assert all(0 < float(f[0]) <= 1 for f in first)


def test_bytes_input_with_encoded_pngs(server, reference):
  import tritonclient.http as th
  url, _ = server
  images, top1, _ = reference
  c = th.InferenceServerClient(url[len("http://"):])
  data = np.array([png(im) for im in images[:8]], dtype=object)
  for binary in (True, False):
    inp = th.InferInput("images", [8], "BYTES")
    if binary:
      inp.set_data_from_numpy(data, binary_data=True)
    else:  # JSON BYTES carry base64 text
      inp.set_data_from_numpy(np.array([base64.b64encode(b).decode() for b in data], dtype=object), binary_data=False)
    r = c.infer("digits", [inp], headers=dict(H))
    np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), top1[:8])


# ---------------------------------------------------------------- TF-Serving REST and uploads

def test_tf_serving_predict_rows_columns_b64(server, reference):
  url, _ = server
  images, top1, _ = reference
  r = requests.post(url + "/v1/models/digits:predict", json={"instances": images[:16].tolist()}, headers=H)
  assert r.status_code == 200, r.text
  np.testing.assert_array_equal(np.array(r.json()["predictions"]).argmax(-1), top1[:16])
  b64 = [{"b64": base64.b64encode(png(im)).decode()} for im in images[:16]]
  r = requests.post(url + "/v1/models/other/versions/7:predict", json={"instances": b64}, headers=H)
  np.testing.assert_array_equal(np.array(r.json()["predictions"]).argmax(-1), top1[:16])
  r = requests.post(url + "/v1/models/digits:predict", json={"inputs": {"images": images[:4].tolist()}}, headers=H)
  np.testing.assert_array_equal(np.array(r.json()["outputs"]).argmax(-1), top1[:4])
  r = requests.post(url + "/v1/models/digits:classify?k=2", json={"instances": b64[:3]}, headers=H)
  assert [res[0][0] for res in r.json()["results"]] == [str(t) for t in top1[:3]]
  status = requests.get(url + "/v1/models/other", headers=H).json()
  assert status["model_version_status"][0]["version"] == "7"
  assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_raw_and_multipart_upload(server, reference):
  url, _ = server
  images, top1, _ = reference
  for i in range(3):  # curl --data-binary @digit.png
    r = requests.post(url + "/v1/models/digits:classify", data=png(images[i]),
                      headers={**H, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 5 and preds[0]["label"] == str(top1[i])
    assert preds[0]["probability"] >= preds[-1]["probability"]
  # :predict takes the same upload (what the web page posts, for every task), whatever its Content-Type says
  r2 = requests.post(url + "/v1/models/digits:predict", data=png(images[2]), headers=H)
  assert r2.status_code == 200 and r2.json() == r.json(), r2.text
  # curl -F image=@digit.png; a bigger RGB JPEG is converted and resized to the model's 8x8x1
  big = np.kron(images[0], np.ones((16, 16, 1), np.uint8)).repeat(3, -1)
  buf = io.BytesIO()
  protocol.Image.fromarray(big).save(buf, "JPEG", quality=95)
  r = requests.post(url + "/v1/models/digits:classify?k=3", files={"image": ("d.jpg", buf.getvalue(), "image/jpeg")},
                    headers=H)
  assert r.status_code == 200, r.text
  assert len(r.json()["predictions"]) == 3 and r.json()["predictions"][0]["label"] == str(top1[0])


# ---------------------------------------------------------------- access control and bad input

def test_api_keys(server):
  url, _ = server
  r = requests.post(url + "/v2/models/digits/infer", json={})
  assert r.status_code == 401 and "API key" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
  r = requests.get(url + "/v2/models/digits", headers={"Authorization": "Bearer wrong"})
  assert r.status_code == 403 and r.json() == {"error": "invalid API key"}
  assert requests.get(url + "/v2/models/digits", headers={"X-API-Key": "another-key"}).status_code == 200
  assert requests.get(url + "/metrics").status_code == 401
  assert requests.get(url + "/v2/health/live").status_code == 200


def _png_chunk(kind, data):
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width=20000, height=10000):
  """A valid 1-bit PNG of width*height pixels (200 megapixels) that compresses to a few KB."""
  comp = zlib.compressobj(9)
  row = b"\x00" * (1 + (width + 7) // 8)
  idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
  ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def v2(shape, datatype="UINT8", data=None, name="images", **extra):
  t = {"name": name, "shape": shape, "datatype": datatype}
  if data is not None:
    t["data"] = data
  return {"inputs": [t], **extra}


def test_bad_inputs_get_4xx_with_a_message(server, reference, monkeypatch):
  url, _ = server
  images = reference[0]
  infer, classify = url + "/v2/models/digits/infer", url + "/v1/models/digits:classify"
  ok = v2([1, 8, 8, 1], data=images[0].ravel().tolist())
  tensor = images[:1].tobytes()
  head = v2([1, 8, 8, 1])
  head["inputs"][0]["parameters"] = {"binary_data_size": 64}
  binary_head = json.dumps(head).encode()
  gif = io.BytesIO()
  protocol.Image.fromarray(images[0, ..., 0]).save(gif, "GIF")
  decoded = []  # proof that the 200-megapixel PNG is never decoded
  orig_load = protocol.Image.Image.load
  monkeypatch.setattr(protocol.Image.Image, "load", lambda self: decoded.append(self.size) or orig_load(self))
  cases = [  # (method, url, kwargs, status, words in the message)
      ("post", infer, {"data": b"x" * (2 << 20)}, 413, "limit"),
      ("post", infer, {"data": iter([b"[" * 65536] * 20)}, 413, "limit"),  # chunked, no Content-Length
      ("post", infer, {"data": b"[" * 100 + b"]" * 100}, 400, "nested"),
      ("post", infer, {"data": b"{not json"}, 400, "not valid JSON"),
      ("post", infer, {"json": v2([1, 8, 8, 1], name="pixels", data=[0] * 64)}, 400, "'pixels'"),
      ("post", infer, {"json": v2([1, 8, 8, 1], data=[0] * 63)}, 400, "'images': 63 values"),
      ("post", infer, {"json": v2([2 ** 40, 2 ** 40, 8, 1], data=[0])}, 400, "'images': shape"),
      ("post", infer, {"json": v2([1, 8, 8, -1], data=[0])}, 400, "non-negative"),
      ("post", infer, {"json": v2([1, 8, 8, 1], data=[300] * 64)}, 400, "within [0, 255]"),
      ("post", infer, {"data": json.dumps(v2([1, 8, 8, 1], "FP32", [float("nan")] * 64))}, 400, "finite"),
      ("post", infer, {"json": v2([1, 9, 9, 1], data=[0] * 81)}, 400, "does not match [-1, 8, 8, 1]"),
      ("post", infer, {"json": v2([1, 8, 8, 1], "INT32", [0] * 64)}, 400, "'INT32'"),
      ("post", infer, {"json": v2([0, 8, 8, 1], data=[])}, 400, "no images"),
      ("post", infer, {"data": binary_head + tensor[:-1], "headers": {
          "Inference-Header-Content-Length": str(len(binary_head))}}, 400, "binary_data_size 64"),
      ("post", infer, {"data": binary_head + tensor, "headers": {"Inference-Header-Content-Length": "abc"}}, 400,
       "Inference-Header-Content-Length"),
      ("post", infer, {"json": {**ok, "outputs": [{"name": "scores"}]}}, 400, "unknown output"),
      ("post", classify, {"data": gif.getvalue()}, 415, "GIF"),
      ("post", classify, {"data": b"hello, not an image"}, 415, "unknown"),
      ("post", classify, {"data": png(images[0])[:40]}, 400, "PNG"),
      ("post", classify, {"data": huge_png()}, 413, "200000000 pixels"),
      ("post", url + "/v1/models/digits:predict", {"json": {"instances": [{"b64": "!!"}]}}, 400, "base64"),
      ("post", url + "/v1/models/digits:predict", {"json": {"rows": []}}, 400, "instances"),
      ("post", url + "/v2/models/nope/infer", {"json": ok}, 404, "'nope' not found"),
      ("get", url + "/v2/models/digits/versions/99", {}, 404, "no version '99'"),
      ("get", url + "/no/such/route", {}, 404, "Not Found"),
      ("get", infer, {}, 405, "Method Not Allowed"),
  ]
  assert len(huge_png()) < 40_000
  for method, u, kwargs, status, words in cases:
    headers = {**H, **kwargs.pop("headers", {})}
    r = getattr(requests, method)(u, headers=headers, timeout=20, **kwargs)
    assert r.status_code == status, (u, words, r.status_code, r.text)
    assert words in r.json()["error"], (words, r.json())
  assert not any(w * h > 1_000_000 for w, h in decoded), decoded
  r = requests.post(infer, json=ok, headers=H)  # still serving
  assert r.status_code == 200 and len(r.json()["outputs"]) == 2


def test_integral_floats_for_uint8_pixels(server, reference):
  """Clients that write every JSON number as a float send 12.0 for a UINT8 pixel: accepted; 12.5 and 256.0
  are not pixels: 400 naming the input."""
  url, _ = server
  infer = url + "/v2/models/digits/infer"
  images = reference[0][:2]
  as_ints = requests.post(infer, json=v2([2, 8, 8, 1], data=images.ravel().tolist()), headers=H)
  body = json.dumps(v2([2, 8, 8, 1], data=[float(v) for v in images.ravel()]))
  assert ".0, " in body  # the wire really carries floats
  as_floats = requests.post(infer, data=body, headers=H)
  assert as_floats.status_code == 200, as_floats.text
  assert as_floats.json()["outputs"] == as_ints.json()["outputs"]
  for bad, words in ((12.5, "uint8 data must be integers, got 12.5"), (256.0, "within [0, 255]"),
                     (-1.0, "within [0, 255]")):
    data = [12.0] * 127 + [bad]
    r = requests.post(infer, json=v2([2, 8, 8, 1], data=data), headers=H)
    assert r.status_code == 400 and "'images'" in r.json()["error"] and words in r.json()["error"], r.text
  r = requests.post(infer, json=v2([1, 8, 8, 1], "FP32", data=[12.5] * 64), headers=H)
  assert r.status_code == 200, r.text  # FP32 takes fractions, of course


def test_queue_full_gives_503_with_retry_after(server):
  """A batcher stuck on a slow batch with room for one queued request: the third concurrent request is refused."""
  url, gate = server
  model = next(m for m in gate.app.state.server.served if m.name == "other")
  release = threading.Event()
  original = model.batchers["uint8"]
  slow = lambda x: (release.wait(20), {k: np.zeros((len(x), 10), np.float32) for k in ("logits", "probabilities")})
  model.batchers["uint8"] = Batcher(lambda x: slow(x)[1], (1, 4), 0, max_queue=1)
  body = v2([1, 8, 8, 1], data=[0] * 64)
  try:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = [pool.submit(requests.post, url + "/v2/models/other/infer", json=body, headers=H, timeout=30)]
      time.sleep(0.3)  # the first is now running; the second fills the queue
      futures.append(pool.submit(requests.post, url + "/v2/models/other/infer", json=body, headers=H, timeout=30))
      time.sleep(0.3)
      r = requests.post(url + "/v2/models/other/infer", json=body, headers=H, timeout=30)
      assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
      release.set()
      assert [f.result().status_code for f in futures] == [200, 200]
  finally:
    release.set()
    model.batchers["uint8"].close()
    model.batchers["uint8"] = original


def test_metrics_and_access_log(server, caplog):
  url, _ = server
  with caplog.at_level("INFO", logger="imgrec.access"):
    requests.post(url + "/v2/models/digits/infer", json=v2([2, 8, 8, 1], data=[0] * 128), headers=H)
    requests.get(url + "/no/such/route", headers=H)  # this test's own 404: xdist may run it on a worker alone
    # The server logs and counts a request just after its last byte is sent, so the client can be a moment
    # ahead of both: wait for them rather than race.
    deadline = time.monotonic() + 10
    while not any('"POST /v2/models/digits/infer" 200' in r.getMessage() for r in caplog.records):
      assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
      time.sleep(0.02)
  expected = ['imgrec_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"}',
              'imgrec_requests_total{method="GET",route="unmatched",status="404"}',
              'imgrec_batch_size_bucket{le="2.0",model="digits:', 'imgrec_queue_depth{kind="uint8",model="digits:',
              "imgrec_request_seconds_bucket"]
  while True:
    text = requests.get(url + "/metrics", headers=H).text
    missing = [line for line in expected if line not in text]
    if not missing:
      break
    assert time.monotonic() < deadline, f"not in /metrics: {missing}"
    time.sleep(0.02)


# ---------------------------------------------------------------- pieces

def test_batcher_merges_pads_and_splits():
  seen, gate = [], threading.Event()

  def fn(x):
    gate.wait(10)
    seen.append(len(x))
    return x.reshape(len(x), -1).sum(-1, keepdims=True)
  b = Batcher(fn, (1, 4, 8), max_delay_s=0, max_queue=16)
  first = b.submit(np.full((1, 2), 1))  # holds the worker so the next ones queue up
  time.sleep(0.1)
  futs = [b.submit(np.full((n, 2), n)) for n in (1, 2, 3)]
  futs[1].cancel()  # a timed-out request costs nothing
  gate.set()
  assert first.result(10).tolist() == [[2]]
  assert [f.result(10).ravel().tolist() for f in (futs[0], futs[2])] == [[2], [6, 6, 6]]
  assert seen == [1, 4]  # 1 + 3 live rows padded to 4
  b.close()
  blocked = Batcher(lambda x: time.sleep(0.5) or x, (1,), 0, max_queue=1)
  blocked.submit(np.zeros((1, 1)))
  time.sleep(0.1)
  blocked.submit(np.zeros((1, 1)))
  with pytest.raises(QueueFull):
    blocked.submit(np.zeros((1, 1)))
  blocked.close()


def test_json_depth_ignores_brackets_in_strings():
  limits = protocol.Limits(max_json_depth=3)
  assert protocol.load_json(json.dumps({"a": "[[[[\\\"{{{{", "b": [[1]]}).encode(), limits)["b"] == [[1]]
  with pytest.raises(protocol.RequestError, match="4 levels"):
    protocol.load_json(b'{"a": [[[1]]], "s": "]]]"}', limits)


# ---------------------------------------------------------------- web page in a real browser

CHROMIUM = "/usr/bin/chromium"
needs_browser = needs_debian(os.path.exists(CHROMIUM) and shutil.which("chromedriver"),
                             "chromium and chromium-driver")


@contextlib.contextmanager
def browser(tmp_path):
  """Headless Chromium through selenium, quit on exit."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,800"):
    opts.add_argument(flag)
  driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
  try:
    yield driver
  finally:
    driver.quit()


def upload_on_page(driver, url, path):
  """Opens the page, gives the API key and picks the file `path` (the page uploads it at once)."""
  from selenium.webdriver.common.by import By
  driver.get(url + "/")
  driver.find_element(By.ID, "key").send_keys(KEY)
  driver.find_element(By.ID, "file").send_keys(str(path))


@needs_browser
def test_web_page_upload_shows_top5(server, reference, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  url, _ = server
  images = reference[0]
  path = tmp_path / "digit.png"
  path.write_bytes(png(np.kron(images[5], np.ones((16, 16, 1), np.uint8))))  # 128x128 for a visible preview
  expected = requests.post(url + "/v1/models/digits:classify", data=path.read_bytes(), headers=H).json()
  with browser(tmp_path) as driver:
    upload_on_page(driver, url, path)
    WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
    probs = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .prob")]
    shot = os.environ.get("IMGREC_SCREENSHOT", str(tmp_path / "page.png"))
    driver.save_screenshot(shot)
  assert labels == [p["label"] for p in expected["predictions"]]
  assert probs == [f"{100 * p['probability']:.1f}%" for p in expected["predictions"]]
  assert os.path.getsize(shot) > 1000


# ---------------------------------------------------------------- the CLI, versions, graceful shutdown

def test_cli_serves_versions_and_drains_on_sigterm(trained_workdir, tmp_path):
  keys = tmp_path / "keys.txt"
  keys.write_text("# comment\n" + KEY + "\n")
  port, grpc_port = free_port(), free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, "-m", "imgrec", "serve", "--workdir", f"d:1={trained_workdir}", "--workdir",
       f"d:2={trained_workdir}", "--port", str(port), "--grpc-port", str(grpc_port), "--api-keys-file", str(keys),
       "--batch-sizes", "1,8", "--no-float-inputs"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    wait_ready(url)
    assert requests.get(url + "/v2/models/d", headers=H).json()["versions"] == ["1", "2"]
    import tritonclient.grpc as tg
    with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:  # --grpc-port: the same models
      assert c.is_model_ready("d", "2", headers={"x-api-key": KEY})
    body = json.dumps(v2([1, 8, 8, 1], data=[0] * 64)).encode()

    def slow_body():  # the request is still arriving when SIGTERM comes
      yield body[:20]
      time.sleep(1.5)
      yield body[20:]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      fut = pool.submit(requests.post, url + "/v2/models/d/versions/1/infer", data=slow_body(), headers=H, timeout=30)
      time.sleep(0.5)
      proc.send_signal(signal.SIGTERM)
      r = fut.result()
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
  finally:
    if proc.poll() is None:
      proc.kill()
    out = proc.stdout.read()
  assert '"POST /v2/models/d/versions/1/infer" 200' in out, out[-2000:]
  assert f"gRPC 127.0.0.1:{grpc_port}" in out and '"GRPC /inference.GRPCInferenceService/ModelReady" OK' in out
