"""The ASGI middleware in front of every HTTP route: access log and metrics around everything; API key and
body-size cap before the route runs."""
import logging
import time

import prometheus_client as prom
from starlette.responses import JSONResponse
from starlette.routing import Match

from imgrec.serve import auth
from imgrec.serve.protocol import RequestError

access_log = logging.getLogger("imgrec.access")


_SECONDS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


def make_metrics():
  """-> (registry, {name: collector}): the server's Prometheus metrics, HTTP and gRPC alike."""
  reg = prom.CollectorRegistry()
  return reg, {
      "requests": prom.Counter("imgrec_requests", "HTTP requests by route and status", ["route", "method", "status"],
                               registry=reg),
      "latency": prom.Histogram("imgrec_request_seconds", "request latency", ["route"], registry=reg,
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)),
      "batch": prom.Histogram("imgrec_batch_size", "images per executed batch", ["model"], registry=reg,
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
      "queue": prom.Gauge("imgrec_queue_depth", "requests waiting in the batcher", ["model", "kind"], registry=reg),
      # per model version (labels model, version): what a multi-model server is asked about each one
      "model_requests": prom.Counter("imgrec_model_requests", "inference requests by outcome",
                                     ["model", "version", "outcome"], registry=reg),
      "model_images": prom.Counter("imgrec_model_images", "images inferred", ["model", "version"], registry=reg),
      "evictions": prom.Counter("imgrec_model_evictions", "versions evicted under the memory budget",
                                ["model", "version"], registry=reg),
      "model_batches": prom.Counter("imgrec_model_batches", "batches executed", ["model", "version"], registry=reg),
      "model_queue": prom.Histogram("imgrec_model_queue_seconds", "time a request waited for its batch",
                                    ["model", "version"], registry=reg, buckets=_SECONDS),
      "model_compute": prom.Histogram("imgrec_model_compute_seconds", "time from its batch's start to its result",
                                      ["model", "version"], registry=reg, buckets=_SECONDS),
      # what a task's own routes keep and time, named by the task (a face gallery's size, its search latency)
      "task_items": prom.Gauge("imgrec_task_items", "items a task's routes keep", ["model", "item"], registry=reg),
      "task_events": prom.Counter("imgrec_task_events", "events of a task's serving (its text-embedding cache's hits "
                                  "and misses)", ["model", "event"], registry=reg),
      "task_seconds": prom.Histogram("imgrec_task_seconds", "time of a task route's own work", ["model", "work"],
                                     registry=reg, buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05,
                                                            .1, .25, .5, 1)),
  }


class Gate:
  """Pure ASGI middleware: access log + metrics around everything; API key and body-size cap in front."""

  def __init__(self, app, key_digests, max_body, metrics, admin_digests=(), admin_routes=()):
    self.app, self.keys, self.max_body, self.m = app, key_digests, max_body, metrics
    self.admin, self.admin_routes = admin_digests, admin_routes  # routes.admin_routes(): tasks' changing routes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    t0, status, size = time.perf_counter(), [500], [0]

    async def send_wrapper(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      elif message["type"] == "http.response.body":
        size[0] += len(message.get("body", b""))
      await send(message)

    try:
      headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
      refused = self._refuse(scope, headers)
      if refused:
        await refused(scope, receive, send_wrapper)
      else:
        await self.app(scope, self._capped(receive), send_wrapper)
    finally:
      route = scope.get("route")
      route = route.path_format if route is not None else "unmatched"  # "/v1/models/{name}:predict"
      dt = time.perf_counter() - t0
      self.m["requests"].labels(route, scope["method"], str(status[0])).inc()
      self.m["latency"].labels(route).observe(dt)
      client = scope.get("client") or ("-", 0)
      access_log.info('%s "%s %s" %d %d %.1fms', client[0], scope["method"], scope["path"], status[0], size[0],
                      dt * 1000)

  def _refuse(self, scope, headers):
    refused = None
    if scope["path"].startswith(auth.ADMIN_PREFIX):  # model management: admin keys only
      refused = auth.check_admin(auth.presented_key(headers), self.keys, self.admin)
    elif any(r.matches(scope)[0] == Match.FULL for r in self.admin_routes):  # e.g. a gallery's enroll
      refused = auth.check_admin(auth.presented_key(headers), self.keys, self.admin,
                                 f"{scope['method']} {scope['path']}")
    elif self.keys and scope["path"] not in auth.OPEN_PATHS:
      refused = auth.check(auth.presented_key(headers), self.keys)
    if refused:
      extra = {"www-authenticate": "Bearer"} if refused[0] == 401 else {}
      return JSONResponse({"error": refused[1]}, refused[0], headers=extra)
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > self.max_body):
      return JSONResponse({"error": f"body of {length} bytes is over the limit of {self.max_body}"}, 413)
    return None

  def _capped(self, receive):
    seen = [0]

    async def capped():  # chunked bodies carry no Content-Length: count as they arrive
      message = await receive()
      if message["type"] == "http.request":
        seen[0] += len(message.get("body", b""))
        if seen[0] > self.max_body:
          raise RequestError(413, f"body is over the limit of {self.max_body} bytes")
      return message
    return capped
