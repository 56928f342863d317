"""Batching, pipelining, replicas and timeouts: the Batcher directly, then through a real server on 127.0.0.1
(HTTP and gRPC into the same batcher, counted by the batch-size histogram in /metrics)."""
import concurrent.futures
import json
import re
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from imgrec.serve import app as app_lib, protocol
from imgrec.serve.batcher import Batcher, Replica, cover_plans
from tests.helpers import run_python
from tests.test_serve import running_server, v2

MAX_DELAY_MS = 1000  # the window; with an idle device it may also close after 250 ms without a new request
TIMEOUT_S = 1.5


def recording_batcher(max_delay_s, sizes=(1, 4, 16), **kw):
  """A Batcher over an instant function that records the rows of every batch it ran."""
  seen, merged = [], []

  def fn(x):
    seen.append(len(x))
    return x.reshape(len(x), -1)[:, :1]
  return Batcher(fn, sizes, max_delay_s, 128, merged.append, **kw), seen, merged


# ---------------------------------------------------------------- the Batcher directly

def test_cover_plans_pad_least():
  plans = cover_plans((1, 2, 4, 8, 16, 32, 64))
  assert plans[33] == [32, 1] and plans[44] == [32, 8, 4] and plans[64] == [64] and plans[3] == [4]
  for n in range(1, 65):  # every plan covers its rows, padding less than the next size would
    assert n <= sum(plans[n]) <= min(s for s in (1, 2, 4, 8, 16, 32, 64) if s >= n)


def test_burst_after_idle_is_merged_into_the_fewest_batches():
  b, seen, merged = recording_batcher(1.0)
  time.sleep(0.2)  # idle
  futures = [b.submit(np.full((1, 2), i)) for i in range(40)]
  assert [f.result(10).item() for f in futures] == list(range(40))
  assert merged == [16, 16, 8] and seen == [16, 16, 4, 4]  # ceil(40 / 16) batches; 8 rows run as 4+4
  b.close()


def test_window_merges_spread_requests_and_a_lone_request_does_not_wait_it_out():
  """Requests 30 ms apart: merged by a 1 s window (its idle gap is 250 ms), one batch each without one
  (the control). A lone request waits for the idle gap, not for the whole window, unless the last batch had
  more rows: then it waits for them up to max_delay."""
  for max_delay, expected in ((1.0, [8]), (0.0, [1] * 8)):
    b, _, merged = recording_batcher(max_delay)
    futures = []
    for i in range(8):
      futures.append(b.submit(np.full((1, 2), i)))
      time.sleep(0.03)
    assert [f.result(10).item() for f in futures] == list(range(8))
    assert merged == expected, (max_delay, merged)
    b.close()
  b, _, merged = recording_batcher(2.0)
  t = time.monotonic()
  b.submit(np.zeros((1, 2))).result(10)
  assert 0.45 < time.monotonic() - t < 1.9 and merged == [1]
  b.submit(np.zeros((4, 2))).result(10)  # after a batch of 4, the window waits for 4 rows: up to max_delay
  t = time.monotonic()
  b.submit(np.zeros((1, 2))).result(10)
  assert 1.9 < time.monotonic() - t < 3.0 and merged == [1, 4, 1]
  t = time.monotonic()
  b.submit(np.zeros((1, 2))).result(10)  # the last batch was 1 row: the idle gap again
  assert 0.45 < time.monotonic() - t < 1.9 and merged == [1, 4, 1, 1]
  b.close()


class Pending:
  """A launched batch whose result is ready once `gate` is set (as a JAX array is once computed)."""

  def __init__(self, x, gate):
    self.x, self.gate = x, gate

  def __array__(self, dtype=None, copy=None):
    assert self.gate.wait(10)
    return self.x.reshape(len(self.x), -1)[:, :1]


@pytest.mark.parametrize("pipeline", [1, 2])
def test_pipeline_launches_the_next_batch_while_one_computes(pipeline):
  gate, launched = threading.Event(), []
  replica = Replica(lambda x: launched.append(len(x)) or Pending(x, gate))
  b = Batcher([replica], (1, 4), 0, 16, pipeline=pipeline)
  first = b.submit(np.zeros((4, 2)))
  time.sleep(0.1)
  second = b.submit(np.ones((4, 2)))
  time.sleep(0.2)
  assert launched == [4, 4][:pipeline]  # the second is dispatched before the first is done only with 2
  gate.set()
  assert first.result(10).ravel().tolist() == [0] * 4 and second.result(10).ravel().tolist() == [1] * 4
  assert launched == [4, 4]
  b.close()


def test_replicas_take_batches_in_turn():
  gates = [threading.Event(), threading.Event()]
  launched = []
  replicas = [Replica((lambda i: lambda x: launched.append(i) or Pending(x, gates[i]))(i), f"dev{i}")
              for i in range(2)]
  b = Batcher(replicas, (1, 4), 0, 16)
  futures = [b.submit(np.full((4, 2), i)) for i in range(2)]
  time.sleep(0.2)
  assert launched == [0, 1]  # both devices busy at once, each with its own batch
  third = b.submit(np.full((4, 2), 2))
  time.sleep(0.1)
  assert launched == [0, 1]  # waits for a free device
  gates[1].set()
  assert third.result(10).ravel().tolist() == [2] * 4 and launched == [0, 1, 1]
  gates[0].set()
  assert [f.result(10).ravel().tolist() for f in futures] == [[0] * 4, [1] * 4]
  b.close()


def test_replicas_on_two_devices_serve_the_same_logits(trained_workdir):
  """ServedModel on 2 (fake CPU) devices: one compiled replica each, batches alternate between them, and the
  logits are those of the model on one device."""
  out = run_python(f"""
import json, numpy as np, jax
from imgrec import state as train_state, steps, workdir as wd
from imgrec.data import sources
from imgrec.serve import app, gate
assert jax.device_count() == 2
cfg, info, model, state = wd.restore({trained_workdir!r})
images = sources.load(cfg.data).split("test").get(np.arange(16))[0]
ref = np.asarray(model.apply(train_state.variables(state), steps.normalize(images, info["mean"], info["std"]),
                             train=False))
_, metrics = gate.make_metrics()
m = app.ServedModel("d", None, {trained_workdir!r})
m.load(app.Options(batch_sizes=(1, 4), float_inputs=False), metrics)
b = m.batchers["uint8"]
used = []
for r in b.replicas:
  r.launch = (lambda f, name: lambda x: used.append(name) or f(x))(r.launch, r.name)
futures = [b.submit(images[i:i + 4]) for i in range(0, 16, 4)]
got = np.concatenate([f.result(60)["logits"] for f in futures])
np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
print("USED", json.dumps([used, [r.name for r in b.replicas]]))
m.close()
""", devices=2)
  used, names = json.loads(out.stdout.split("USED", 1)[1])
  # Each batch runs on one replica; the first two, with both idle, go in turn. Later ones take the next replica
  # in turn that is free, so their order depends on which finished first.
  assert len(set(names)) == 2 and len(used) == 4 and used[:2] == names and set(used) == set(names), (used, names)


# ---------------------------------------------------------------- through a real server

@pytest.fixture(scope="module")
def server(trained_workdir):
  options = app_lib.Options(batch_sizes=(1, 4, 16), max_delay_ms=MAX_DELAY_MS, max_queue=64, timeout_s=TIMEOUT_S,
                            limits=protocol.Limits(max_images=64), grpc_address="127.0.0.1:0")
  with running_server([("digits", None, trained_workdir)], options) as (url, gate):
    client = tg.InferenceServerClient(f"127.0.0.1:{gate.app.state.grpc_port}")
    yield url, gate, client
    client.close()


def batches(url):
  """(count, images) of the digits model's batch-size histogram in /metrics."""
  text = requests.get(url + "/metrics").text
  count = re.search(r'imgrec_batch_size_count\{model="digits:\d+"\} (\S+)', text)
  total = re.search(r'imgrec_batch_size_sum\{model="digits:\d+"\} (\S+)', text)
  return int(float(count.group(1))), int(float(total.group(1)))


def test_burst_over_http_and_grpc_is_served_in_ceil_n_over_max_batches(server, reference):
  url, _, client = server
  images, top1, _ = reference
  time.sleep(0.3)  # idle, longer than the window's idle gap
  before = batches(url)
  start = threading.Barrier(40)

  def send(i):  # even: HTTP JSON, odd: gRPC; one image each
    start.wait()
    if i % 2:
      inp = tg.InferInput("images", [1, 8, 8, 1], "UINT8")
      inp.set_data_from_numpy(images[i:i + 1])
      return int(client.infer("digits", [inp]).as_numpy("logits").argmax())
    r = requests.post(url + "/v2/models/digits/infer", json=v2([1, 8, 8, 1], data=images[i].ravel().tolist()))
    return int(np.argmax(r.json()["outputs"][0]["data"]))
  with concurrent.futures.ThreadPoolExecutor(40) as pool:
    got = list(pool.map(send, range(40)))
  assert got == list(top1[:40])
  count, total = batches(url)
  assert (count - before[0], total - before[1]) == (3, 40)  # ceil(40 / 16), from a cold start


def test_lone_requests_wait_the_window_then_only_the_idle_gap(server):
  """After a batch of 4, a lone request waits for 4 rows until the window closes at max_delay; after that
  batch of 1, the next lone request waits only the idle gap (max_delay / 4)."""
  url, _, _ = server
  infer = url + "/v2/models/digits/infer"
  assert requests.post(infer, json=v2([4, 8, 8, 1], data=[0] * 256)).status_code == 200
  before = batches(url)
  for low, high in ((MAX_DELAY_MS / 1000, TIMEOUT_S), (MAX_DELAY_MS / 4000 * 0.9, MAX_DELAY_MS / 1000)):
    t = time.monotonic()
    r = requests.post(infer, json=v2([1, 8, 8, 1], data=[0] * 64))
    dt = time.monotonic() - t
    assert r.status_code == 200 and low < dt < high, (low, dt, high)
  assert np.subtract(batches(url), before).tolist() == [2, 2]


def test_request_that_waits_too_long_gets_504_and_costs_nothing(server):
  """Over the server's 1.5 s timeout: 504 over HTTP, DEADLINE_EXCEEDED over gRPC (also for a client deadline).
  The requests that timed out while queued are dropped before they reach the device."""
  url, gate, client = server
  model = gate.app.state.server.served[0]
  release, calls = threading.Event(), []

  def stuck(x):
    calls.append(len(x))
    release.wait(20)
    return {k: np.zeros((len(x), 10), np.float32) for k in ("logits", "probabilities")}
  original = model.batchers["uint8"]
  model.batchers["uint8"] = Batcher(stuck, (1, 4), 0, max_queue=8)
  body = v2([1, 8, 8, 1], data=[0] * 64)
  inp = tg.InferInput("images", [1, 8, 8, 1], "UINT8")
  inp.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
  try:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      first = pool.submit(requests.post, url + "/v2/models/digits/infer", json=body, timeout=30)
      time.sleep(0.3)  # the first now holds the (stuck) device; the next ones queue behind it
      queued = pool.submit(requests.post, url + "/v2/models/digits/infer", json=body, timeout=30)
      over_grpc = pool.submit(lambda: client.infer("digits", [inp]))
      r = first.result()
      assert r.status_code == 504 and f"did not finish within {TIMEOUT_S} s" in r.json()["error"]
      assert queued.result().status_code == 504
      with pytest.raises(InferenceServerException) as e:
        over_grpc.result()
      assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
      with pytest.raises(InferenceServerException) as e:  # the client's own, shorter deadline
        client.infer("digits", [inp], client_timeout=0.3)
      assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    release.set()
    time.sleep(0.3)
    assert calls == [1]  # only the request already on the device ran
    r = requests.post(url + "/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 200 and calls == [1, 1]  # still serving
  finally:
    release.set()
    model.batchers["uint8"].close()
    model.batchers["uint8"] = original
