"""The HTTP routes: OIP v2, TF-Serving REST, image uploads, the page, metrics, and the routes tasks add.

Handlers are plain functions of the request; what the server holds (app.Server: the served models, options,
metrics) is `request.app.state.server`. Every error is `{"error": "..."}` (app.py's exception handlers).

A task adds routes with an optional `routes() -> [(method, suffix, handler)]` in its module: `suffix` is
":verb" or "/path" (Starlette path syntax, e.g. "/gallery/{item}"), mounted under `/v1/models/{name}` and
`/v1/models/{name}/versions/{version}`; `handler(request, served) -> Response or dict (sent as JSON)` gets the
ready ServedModel of the request's name and version. A model whose task has no such route answers 404. A task
signals a bad request with starlette's HTTPException(status, detail).
"""
import importlib.metadata

import prometheus_client as prom
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from imgrec import tasks
from imgrec.serve import page, protocol, served as served_lib
from imgrec.serve.protocol import RequestError

V1 = ("/v1/models/{name}", "/v1/models/{name}/versions/{version}")
V2 = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


# ---------------------------------------------------------------- request helpers

def model_of(request):
  """The ready ServedModel the path names (404 / 503 otherwise)."""
  return protocol.find_model(request.app.state.server.served, request.path_params["name"],
                             request.path_params.get("version"))


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


def version():
  try:
    return importlib.metadata.version("imgrec")
  except importlib.metadata.PackageNotFoundError:
    return "0"


# ---------------------------------------------------------------- OIP v2

async def live(request):
  return JSONResponse({"live": True})


async def ready(request):
  why = request.app.state.server.readiness()
  return JSONResponse({"error": why}, 503) if why else JSONResponse({"ready": True})


async def server_metadata(request):
  return JSONResponse({"name": "imgrec", "version": version(), "extensions": list(protocol.EXTENSIONS)})


async def model_metadata(request):
  return JSONResponse(protocol.model_metadata(model_of(request), request.app.state.server.served))


async def model_ready(request):
  m = model_of(request)
  return JSONResponse({"name": m.name, "version": str(m.version), "ready": True})


async def v2_infer(request):
  m, limits = model_of(request), request.app.state.server.options.limits
  raw = await request.body()
  req = await parse(len(raw), protocol.parse_v2_infer, raw, request.headers.get("inference-header-content-length"),
                    m.spec, limits)
  tensors = await m.infer(req.images, req.kind)
  body, headers = await protocol.off_loop(len(req.images) > protocol.BIG_REPLY_IMAGES, protocol.v2_response,
                                          m.name, m.version, req, tensors, m.spec.classify)
  return Response(body, headers=headers)


# ---------------------------------------------------------------- TF-Serving REST and uploads

async def v1_status(request):
  m = model_of(request)
  return JSONResponse({"model_version_status": [
      {"version": str(x.version), "state": "AVAILABLE" if x.ready else "LOADING",
       "status": {"error_code": "OK", "error_message": ""}} for x in request.app.state.server.served
      if x.name == m.name]})


async def v1_predict(request):
  m, limits = model_of(request), request.app.state.server.options.limits
  raw = await request.body()
  if protocol.is_upload(content_type(request), raw):
    return await upload(request, m, raw)
  body = await parse(len(raw), protocol.load_json, raw, limits)
  images, kind, columnar = await parse(len(raw), protocol.parse_tfs, body, m.spec, limits)
  tensors = await m.infer(images, kind)
  return JSONResponse(protocol.tfs_response(tensors, served_lib.tfs_outputs(m.task), columnar))


async def v1_classify(request):
  m, limits = model_of(request), request.app.state.server.options.limits
  task = m.classifier(":classify")
  raw = await request.body()
  if content_type(request) != "application/json":
    return await upload(request, m, raw)
  # TF-Serving style: results per instance as [label, score] pairs
  k = max(1, min(query_k(request) or task.UPLOAD_K, len(m.spec.class_names)))
  body = await parse(len(raw), protocol.load_json, raw, limits)
  images, kind, _ = await parse(len(raw), protocol.parse_tfs, body, m.spec, limits)
  probs = (await m.infer(images, kind))["probabilities"]
  return JSONResponse({"results": [[[m.spec.class_names[j], float(p[j])] for j in t]
                                   for p, t in zip(probs, task.top_k(probs, k))]})


async def upload_body(request, raw, limits):
  """The image bytes of an upload: the body itself, or a multipart request's one file (read from memory: the
  Gate has capped the body)."""
  if content_type(request) != "multipart/form-data":
    return raw
  form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_body_bytes)
  files = [v for v in form.values() if hasattr(v, "read")]
  if not files:
    raise RequestError(400, "multipart upload has no file field; send the image as a file, e.g. -F image=@cat.png")
  return await files[0].read()


async def upload(request, m, raw):
  """An image as the body (curl --data-binary @cat.png) or a multipart file (curl -F image=@cat.png, the web
  page) -> the task's JSON of it, in the uploaded image's own coordinates."""
  k = query_k(request)
  raw = await upload_body(request, raw, m.options.limits)
  image, to_source, size = await m.read_image(raw)
  outputs = await m.infer(image[None], "uint8")
  result = m.task.upload_result({n: v[0] for n, v in outputs.items()}, image.shape[:2], to_source, size,
                                m.spec.class_names, k)
  return JSONResponse({"model": m.name, "version": str(m.version), **result})


# ---------------------------------------------------------------- the page and metrics

async def index(request):
  server = request.app.state.server
  return HTMLResponse(page.render(sorted({m.name for m in server.served}), bool(server.options.api_keys)))


async def metrics_endpoint(request):
  return Response(prom.generate_latest(request.app.state.server.registry), media_type=prom.CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- the route table

def core_routes():
  """Every route the server answers for any task."""
  routes = [Route("/", index), Route("/metrics", metrics_endpoint), Route("/v2/health/live", live),
            Route("/v2/health/ready", ready), Route("/v2", server_metadata)]
  for prefix in V2:
    routes += [Route(prefix, model_metadata), Route(prefix + "/ready", model_ready),
               Route(prefix + "/infer", v2_infer, methods=["POST"])]
  for prefix in V1:
    routes += [Route(prefix + ":predict", v1_predict, methods=["POST"]),
               Route(prefix + ":classify", v1_classify, methods=["POST"]), Route(prefix, v1_status)]
  return routes


def task_handlers(task_modules):
  """{suffix: {(task NAME, method): handler}} from every task's optional `routes()`."""
  found = {}
  for task in task_modules:
    for method, suffix, handler in getattr(task, "routes", lambda: ())():
      if not suffix.startswith((":", "/")) or suffix in (":predict", ":classify", "/versions"):
        raise ValueError(f"task {task.NAME}: route suffix {suffix!r} must start with ':' or '/' and not be a "
                         "server route")
      found.setdefault(suffix, {})[(task.NAME, method.upper())] = handler
  return found


def dispatcher(suffix, handlers):
  """One endpoint for a suffix: the handler of the model's task for the request's method."""
  async def endpoint(request):
    m = model_of(request)
    handler = handlers.get((m.task.NAME, request.method))
    if handler is None:
      raise RequestError(404, f"model {m.name!r} is a {m.task.NAME} model; it has no {request.method} "
                              f"route {suffix}")
    reply = await handler(request, m)
    return JSONResponse(reply) if isinstance(reply, dict) else reply
  return endpoint


def task_routes(task_modules=None):
  """The routes tasks add, mounted under both model prefixes."""
  task_modules = tasks.TASKS.values() if task_modules is None else task_modules
  routes = []
  for suffix, handlers in task_handlers(task_modules).items():
    methods = sorted({method for _, method in handlers})
    routes += [Route(prefix + suffix, dispatcher(suffix, handlers), methods=methods) for prefix in V1]
  return routes


# ---------------------------------------------------------------- errors, always {"error": ...}

async def request_error(request, exc):
  return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def http_error(request, exc):
  return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


EXCEPTION_HANDLERS = {RequestError: request_error, HTTPException: http_error}
