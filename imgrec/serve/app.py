"""The server: models loaded from workdirs, a Starlette app with the OIP v2 / TF-Serving / upload routes, the
OIP v2 gRPC service beside it (grpc_service.py, same event loop), `serve()`.

Request path: Gate (access log, metrics, API key, body cap) -> route -> protocol parsing (all validation
before any work) -> the model's Batcher (bounded queue, padded compiled batch sizes, one replica per
device) -> response. gRPC requests take the same path from their own parser on.
Models are restored and warmed up in a background thread, so `/v2/health/live` answers at once and
`/v2/health/ready` turns true only when every padded size of every model has run once.
"""
import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time

import anyio
import jax
import numpy as np
import prometheus_client as prom
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from imgrec import tasks, workdir as wd
from imgrec.errors import UserError
from imgrec.serve import auth, grpc_service, page, protocol
from imgrec.serve.batcher import Batcher, QueueFull, Replica
from imgrec.serve.protocol import RequestError

log = logging.getLogger("imgrec")
access_log = logging.getLogger("imgrec.access")


@dataclasses.dataclass(frozen=True)
class Options:
  batch_sizes: tuple = (1, 8, 32, 64)
  max_delay_ms: float = 1.0
  max_queue: int = 256       # requests waiting per batcher; beyond: 503 + Retry-After
  timeout_s: float = 30.0    # per request, queue wait + inference (504 after)
  float_inputs: bool = True  # also compile the FP32 (pre-normalised) path
  limits: protocol.Limits = protocol.Limits()
  api_keys: tuple = ()
  grpc_address: str | None = None  # "HOST:PORT" of the OIP v2 gRPC service; None: HTTP only
  pipeline: int = 1          # batches in flight per device; 2 merges, copies and dispatches the next batch while
                             # one computes (slower on a 2-core CPU: it halves the batches; see BENCHMARKS.md)
  replicas: int = 0          # devices used, one model replica each, taking batches in turn (0: all)


def parse_model_arg(arg):
  """`W`, `NAME=W` or `NAME:VERSION=W` -> (name, version or None, workdir). The default name is W's basename;
  the default version is the restored checkpoint's step."""
  name, version, path = None, None, arg
  if "=" in arg:
    left, path = arg.split("=", 1)
    name, _, version = left.partition(":")
    if version and not version.isdigit():
      raise UserError(f"--workdir {arg}: version {version!r} must be a positive integer (NAME:VERSION=DIR)")
  path = os.path.abspath(path)
  if not os.path.isfile(os.path.join(path, wd.CONFIG_FILE)):
    raise UserError(f"--workdir {arg}: {path} has no config.json; pass a workdir written by `imgrec train`")
  name = name or os.path.basename(path.rstrip("/"))
  if not name or "/" in name or ":" in name:
    raise UserError(f"--workdir {arg}: model name {name!r} is not usable in a URL; use NAME=DIR")
  return name, (int(version) if version else None), path


def make_predict(task, model, mean, std):
  """The task's pure predict functions by input kind: uint8 pixels (normalised on device) or already-normalised
  floats -> the model's outputs, decoding included."""
  return {"uint8": task.make_predict(model, mean, std), "float32": task.make_predict(model, mean, std, normalized=True)}


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What the server takes from a trained workdir."""
  variables: dict
  info: dict      # dataset.json
  step: int
  fns: dict       # {"uint8": fn, "float32": fn}, each `fn(variables, images) -> outputs`
  task: object    # the run's task module: its post-processing makes the served outputs
  outputs: tuple  # tasks.outputs: (name, datatype, per-example shape)


def load_workdir(workdir):
  """A trained workdir, restored without optimiser state -> Loaded."""
  run = wd.restore(workdir, params_only=True)
  task = tasks.get(run.cfg.task)
  return Loaded(run.variables, run.info, int(run.state.step), make_predict(task, run.model, run.info["mean"],
                run.info["std"]), task, tuple(tasks.outputs(task, run.model, run.info)))


def compile_replica(fn, variables, device, sizes, image_shape, dtype):
  """`fn(variables, images)` compiled for every padded size on one device and run once there -> Replica."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  variables = jax.device_put(variables, sharding)
  jitted, compiled = jax.jit(fn), {}
  for b in sizes:
    x = jax.ShapeDtypeStruct((b, *image_shape), dtype, sharding=sharding)
    compiled[b] = jitted.lower(variables, x).compile()
    jax.block_until_ready(compiled[b](variables, np.zeros(x.shape, dtype)))  # any pytree of outputs

  def launch(x):  # host-to-device copy and an asynchronous dispatch; np.asarray(result) waits
    return compiled[len(x)](variables, jax.device_put(x, sharding))
  return Replica(launch, str(device))


class ServedModel:
  """One model version: restored variables and a warmed Batcher per input kind."""

  def __init__(self, name, version, workdir):
    self.name, self.version, self.workdir = name, version, workdir
    self.spec, self.batchers, self.ready, self.task = None, {}, False, None

  def load(self, options, metrics):
    loaded = load_workdir(self.workdir)
    variables, info, fns, self.task = loaded.variables, loaded.info, dict(loaded.fns), loaded.task
    self.version = self.version or loaded.step
    names = tuple(info["class_names"])
    classify = getattr(self.task, "classification_strings", None)
    self.spec = protocol.ModelSpec(tuple(info["image_shape"]), names, info.get("pp_eval", ""), loaded.outputs,
                                   classify and (lambda values, k: classify(values, k, names)))
    if not options.float_inputs:
      del fns["float32"]
    devices = jax.local_devices()[:options.replicas or None]
    label = f"{self.name}:{self.version}"
    for kind, fn in fns.items():
      dtype = np.uint8 if kind == "uint8" else np.float32
      replicas = [compile_replica(fn, variables, d, options.batch_sizes, self.spec.image_shape, dtype)
                  for d in devices]
      self.batchers[kind] = Batcher(replicas, options.batch_sizes, options.max_delay_ms / 1000, options.max_queue,
                                    metrics["batch"].labels(label).observe, f"batcher-{label}-{kind}",
                                    options.pipeline)
      metrics["queue"].labels(label, kind).set_function(self.batchers[kind].depth)
    self.ready = True

  async def infer(self, images, kind, timeout):
    """-> the task's outputs {name: numpy array [B, ...]} (its OUTPUTS)."""
    if kind not in self.batchers:
      raise RequestError(400, "FP32 inputs are disabled on this server; send UINT8 pixels or encoded images")
    if len(images) == 0:
      raise RequestError(400, "the request holds no images")
    try:
      fut = self.batchers[kind].submit(images)
    except QueueFull as e:
      raise RequestError(503, f"server busy: {e}; retry shortly", {"retry-after": "1"})
    try:
      async with asyncio.timeout(timeout):  # on expiry the future is cancelled, so the batcher skips it
        outputs = await asyncio.wrap_future(fut)
    except TimeoutError:
      raise RequestError(504, f"inference did not finish within {timeout} s")
    return {name: np.asarray(value) for name, value in outputs.items()}

  def classifier(self, route):
    """This model's task module, for the route that only classification answers (TF-Serving :classify)."""
    if self.task.NAME != tasks.classification.NAME:
      raise RequestError(400, f"model {self.name!r} is a {self.task.NAME} model; {route} serves classifiers "
                         f"only: use /v1/models/{self.name}:predict (TF-Serving JSON, or the image itself as the "
                         "body) or the OIP v2 /v2/models/{name}/infer route")
    return self.task

  def close(self):
    for b in self.batchers.values():
      b.close()


def _metrics():
  reg = prom.CollectorRegistry()
  return reg, {
      "requests": prom.Counter("imgrec_requests", "HTTP requests by route and status", ["route", "method", "status"],
                               registry=reg),
      "latency": prom.Histogram("imgrec_request_seconds", "request latency", ["route"], registry=reg,
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)),
      "batch": prom.Histogram("imgrec_batch_size", "images per executed batch", ["model"], registry=reg,
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
      "queue": prom.Gauge("imgrec_queue_depth", "requests waiting in the batcher", ["model", "kind"], registry=reg),
  }


class Gate:
  """Pure ASGI middleware: access log + metrics around everything; API key and body-size cap in front."""

  def __init__(self, app, key_digests, max_body, metrics):
    self.app, self.keys, self.max_body, self.m = app, key_digests, max_body, metrics

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
      route = route.path if route is not None else "unmatched"
      dt = time.perf_counter() - t0
      self.m["requests"].labels(route, scope["method"], str(status[0])).inc()
      self.m["latency"].labels(route).observe(dt)
      client = scope.get("client") or ("-", 0)
      access_log.info('%s "%s %s" %d %d %.1fms', client[0], scope["method"], scope["path"], status[0], size[0],
                      dt * 1000)

  def _refuse(self, scope, headers):
    if self.keys and scope["path"] not in auth.OPEN_PATHS:
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


def create_app(models, options=Options()):
  """`models`: [(name, version or None, workdir)]. Loading and warm-up start with the app's lifespan."""
  served = [ServedModel(*m) for m in models]
  registry, metrics = _metrics()
  limits = options.limits
  state = {"error": None}

  def load_all():
    try:
      for m in served:
        m.load(options, metrics)
      log.info("imgrec serve: ready: %s", ", ".join(f"{m.name}:{m.version}" for m in served))
    except Exception as e:  # reported by /v2/health/ready and the log; the process stays up for probes
      log.exception("model loading failed")
      state["error"] = f"{type(e).__name__}: {e}"

  def get_model(request):
    return protocol.find_model(served, request.path_params["name"], request.path_params.get("version"))

  def readiness():
    """None when every model is ready, else why not."""
    if state["error"]:
      return f"model loading failed: {state['error']}"
    if not all(m.ready for m in served):
      return "models are loading and warming up"
    return None

  async def read_body(request):
    return await request.body()

  def content_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()

  def query_k(request):
    """The query's k (results an upload or :classify answers with), None when absent."""
    k = request.query_params.get("k")
    if k is not None and not (k.isdigit() and int(k) > 0):
      raise RequestError(400, f"query parameter k must be a positive integer, got {k!r}")
    return None if k is None else int(k)

  async def parse(size, fn, *args):
    return await protocol.off_loop(size > protocol.BIG_BODY_BYTES, fn, *args)

  # ---------------------------------------------------------------- OIP v2
  async def live(request):
    return JSONResponse({"live": True})

  async def ready(request):
    why = readiness()
    return JSONResponse({"error": why}, 503) if why else JSONResponse({"ready": True})

  async def server_metadata(request):
    return JSONResponse({"name": "imgrec", "version": _version(), "extensions": list(protocol.EXTENSIONS)})

  async def model_metadata(request):
    return JSONResponse(protocol.model_metadata(get_model(request), served))

  async def model_ready(request):
    m = get_model(request)
    return JSONResponse({"name": m.name, "version": str(m.version), "ready": True})

  async def v2_infer(request):
    m = get_model(request)
    raw = await read_body(request)
    req = await parse(len(raw), protocol.parse_v2_infer, raw, request.headers.get("inference-header-content-length"),
                      m.spec, limits)
    tensors = await m.infer(req.images, req.kind, options.timeout_s)
    body, headers = await protocol.off_loop(len(req.images) > protocol.BIG_REPLY_IMAGES, protocol.v2_response,
                                            m.name, m.version, req, tensors, m.spec.classify)
    return Response(body, headers=headers)

  # ---------------------------------------------------------------- TF-Serving REST and uploads
  async def v1_status(request):
    m = get_model(request)
    return JSONResponse({"model_version_status": [
        {"version": str(x.version), "state": "AVAILABLE" if x.ready else "LOADING",
         "status": {"error_code": "OK", "error_message": ""}} for x in served if x.name == m.name]})

  async def v1_predict(request):
    m = get_model(request)
    raw = await read_body(request)
    if protocol.is_upload(content_type(request), raw):
      return await upload(request, m, raw)
    body = await parse(len(raw), protocol.load_json, raw, limits)
    images, kind, columnar = await parse(len(raw), protocol.parse_tfs, body, m.spec, limits)
    tensors = await m.infer(images, kind, options.timeout_s)
    return JSONResponse(protocol.tfs_response(tensors, tasks.tfs_outputs(m.task), columnar))

  async def v1_classify(request):
    m = get_model(request)
    task = m.classifier(":classify")
    raw = await read_body(request)
    if content_type(request) != "application/json":
      return await upload(request, m, raw)
    # TF-Serving style: results per instance as [label, score] pairs
    k = max(1, min(query_k(request) or task.UPLOAD_K, len(m.spec.class_names)))
    body = await parse(len(raw), protocol.load_json, raw, limits)
    images, kind, _ = await parse(len(raw), protocol.parse_tfs, body, m.spec, limits)
    probs = (await m.infer(images, kind, options.timeout_s))["probabilities"]
    top = task.top_k(probs, k)
    return JSONResponse({"results": [[[m.spec.class_names[j], float(p[j])] for j in t]
                                     for p, t in zip(probs, top)]})

  async def upload(request, m, raw):
    """An image as the body (curl --data-binary @cat.png) or a multipart file (curl -F image=@cat.png, the web
    page) -> the task's JSON of it, in the uploaded image's own coordinates."""
    k = query_k(request)
    if content_type(request) == "multipart/form-data":  # the body is read (capped by the Gate): parsed from memory
      form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_body_bytes)
      files = [v for v in form.values() if hasattr(v, "read")]
      if not files:
        raise RequestError(400, "multipart upload has no file field; send the image as a file, e.g. -F image=@cat.png")
      raw = await files[0].read()
    if not raw:
      raise RequestError(400, "empty body; send an image, e.g. curl --data-binary @cat.png URL")
    image, to_source, size = await anyio.to_thread.run_sync(protocol.decode_upload, raw, m.spec, limits)
    outputs = await m.infer(image[None], "uint8", options.timeout_s)
    result = m.task.upload_result({n: v[0] for n, v in outputs.items()}, image.shape[:2], to_source, size,
                                  m.spec.class_names, k)
    return JSONResponse({"model": m.name, "version": str(m.version), **result})

  async def index(request):
    names = sorted({m.name for m in served})
    return HTMLResponse(page.render(names, bool(options.api_keys)))

  async def metrics_endpoint(request):
    return Response(prom.generate_latest(registry), media_type=prom.CONTENT_TYPE_LATEST)

  # ---------------------------------------------------------------- errors, always {"error": ...}
  async def request_error(request, exc):
    return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

  async def http_error(request, exc):
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

  async def server_error(request, exc):
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)

  routes = [Route("/", index), Route("/metrics", metrics_endpoint),
            Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata)]
  for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    routes += [Route(prefix, model_metadata), Route(prefix + "/ready", model_ready),
               Route(prefix + "/infer", v2_infer, methods=["POST"])]
  for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
    routes += [Route(prefix + ":predict", v1_predict, methods=["POST"]),
               Route(prefix + ":classify", v1_classify, methods=["POST"]), Route(prefix, v1_status)]

  @contextlib.asynccontextmanager
  async def lifespan(app):
    grpc_server = None
    if options.grpc_address:  # on this event loop, beside HTTP
      service = grpc_service.Service(served, options, metrics, readiness, _version())
      grpc_server, app.state.grpc_port = await grpc_service.start(service, options.grpc_address, limits)
    thread = threading.Thread(target=load_all, name="model-loader", daemon=True)
    thread.start()
    yield
    if grpc_server is not None:  # refuses new calls, lets running ones finish
      await grpc_server.stop(options.timeout_s)
    for m in served:  # uvicorn has already drained in-flight requests; finish what is queued
      m.close()

  app = Starlette(routes=routes, lifespan=lifespan,
                  exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: server_error})
  app.state.served, app.state.grpc_port = served, None
  return Gate(app, auth.digests(options.api_keys), limits.max_body_bytes, metrics)


def _version():
  from importlib import metadata
  try:
    return metadata.version("imgrec")
  except metadata.PackageNotFoundError:
    return "0"


def serve(model_args, host="127.0.0.1", port=8000, api_keys_file=None, options=Options(), grpc_port=None):
  """Runs the server (HTTP on `port`, and gRPC on `grpc_port` when given) until SIGINT/SIGTERM; uvicorn then
  stops accepting, drains in-flight requests, and the lifespan shutdown stops gRPC (letting running calls
  finish) and finishes the queued batches."""
  import uvicorn
  models = [parse_model_arg(a) for a in model_args]
  names = [(n, v) for n, v, _ in models]
  if len(set(names)) != len(names):
    raise UserError(f"the same model name and version is given twice: {names}")
  if api_keys_file:
    options = dataclasses.replace(options, api_keys=tuple(auth.load_keys(api_keys_file)))
  elif host not in ("127.0.0.1", "localhost", "::1"):
    log.warning("serving on %s without --api-keys-file: anyone who can reach it can use it", host)
  grpc_note = ""
  if grpc_port is not None:
    options = dataclasses.replace(options, grpc_address=f"[{host}]:{grpc_port}" if ":" in host else
                                  f"{host}:{grpc_port}")
    grpc_note = f" and gRPC {options.grpc_address}"
  logging.getLogger("imgrec").setLevel(logging.INFO)
  access_log.setLevel(logging.INFO)
  print(f"imgrec serve: http://{host}:{port}/{grpc_note} (models load and warm up; /v2/health/ready turns 200 "
        f"when done)", flush=True)
  uvicorn.run(create_app(models, options), host=host, port=port, access_log=False, log_level="warning",
              timeout_graceful_shutdown=options.timeout_s)
