"""The HTTP routes: OIP v2, TF-Serving REST, image uploads, the page, metrics, and the routes tasks add.

Handlers are plain functions of the request; what the server holds (app.Server: the model repository, options,
metrics) is `request.app.state.server`. A route on one model holds it for the whole request (`leased`). Every error is `{"error": "..."}` (app.py's exception handlers).

A task adds routes with an optional `routes() -> [(method, suffix, handler[, admin])]` in its module: `suffix` is
":verb" or "/path" (Starlette path syntax, e.g. "/gallery/{item}"), mounted under `/v1/models/{name}` and
`/v1/models/{name}/versions/{version}`; `handler(request, served) -> Response or dict (sent as JSON)` gets the
ready ServedModel of the request's name and version. A model whose task has no such route answers 404. A task
signals a bad request with starlette's HTTPException(status, detail). `admin` True marks a route that changes
what every client gets (a face gallery's enroll and delete): the Gate asks for an admin key there, as for model
management (auth.check_admin); a path and method that one task marks is admin for every task.
"""
import importlib.metadata

import anyio
import prometheus_client as prom
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route

from imgrec import tasks
from imgrec.serve import management, page, protocol, repository, rest, served as served_lib
from imgrec.serve.protocol import RequestError



class ModelName(Convertor):
  """A model name in a path: no "/" and no ":" (parse_model_arg refuses both), so `/v1/models/{name}` does not
  swallow `/v1/models/m:verb` and a verb asked with the wrong method answers 405, not "model 'm:verb' not found"."""
  regex = "[^/:]+"

  def convert(self, value):
    return value

  def to_string(self, value):
    return value


register_url_convertor("model", ModelName())
V1 = ("/v1/models/{name:model}", "/v1/models/{name:model}/versions/{version}",
      "/v1/models/{name:model}/labels/{version}")
V2 = ("/v2/models/{name:model}", "/v2/models/{name:model}/versions/{version}")


# ---------------------------------------------------------------- request helpers

def model_of(request):
  """The ready ServedModel the path names: what `leased` acquired for this request."""
  return request.state.lease.served


def leased(handler, on_demand=False):
  """`handler` holding the version the path names (a version number, a label, or the latest) for the whole
  request (repository.Lease): a reload or an unload lets it finish on that version. 404 / 503 when it is not
  loaded; with a memory budget, an `on_demand` route loads it first (off the event loop)."""
  async def endpoint(request):
    repo = request.app.state.server.repo
    name, version = request.path_params["name"], request.path_params.get("version")
    try:
      lease = repo.acquire(name, version, on_demand=False)
    except RequestError:
      if not (on_demand and repo.budget is not None):
        raise
      lease = await anyio.to_thread.run_sync(repo.acquire, name, version, True)
    request.state.lease = lease
    try:
      return await handler(request)
    finally:
      repo.release(lease)
  return endpoint


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
  tensors = await m.infer(req.images, req.kind, extras=req.extras)
  body, headers = await protocol.off_loop(protocol.count(req.images) > protocol.BIG_REPLY_IMAGES, protocol.v2_response,
                                          m.name, m.version, req, tensors, m.spec.classify)
  return Response(body, headers=headers)


# ---------------------------------------------------------------- TF-Serving REST and uploads

TFS_STATES = {repository.READY: "AVAILABLE", repository.LOADING: "LOADING", repository.UNLOADING: "UNLOADING",
              repository.UNAVAILABLE: "END"}


async def v1_status(request):
  """TF-Serving's model status: every version the repository knows of the model, with its state."""
  repo = request.app.state.server.repo
  m = repo.model(request.path_params["name"])
  rows = [r for r in repo.index_of(m) if r.get("version", "").isdigit()]
  asked = request.path_params.get("version")
  if asked is not None:
    labels = dict(m.settings.labels)
    asked = str(labels.get(asked, asked))
    rows = [r for r in rows if r["version"] == asked]
    if not rows:
      raise RequestError(404, f"model {m.name!r} has no version {request.path_params['version']!r}")
  return JSONResponse({"model_version_status": [
      {"version": r["version"], "state": TFS_STATES[r["state"]],
       "status": {"error_code": "OK" if r["state"] == repository.READY or not r["reason"] else "UNAVAILABLE",
                  "error_message": "" if r["state"] == repository.READY else r["reason"]}} for r in rows]})


async def v1_predict(request):
  m, limits = model_of(request), request.app.state.server.options.limits
  raw = await request.body()
  if rest.is_upload(content_type(request), raw):
    return await upload(request, m, raw)
  body = await parse(len(raw), protocol.load_json, raw, limits)
  hf = rest.hf_request(body, limits)
  if hf is not None:
    return await hf_upload(m, *hf)
  images, kind, columnar, extras = await parse(len(raw), rest.parse_tfs, body, m.spec, limits)
  tensors = await m.infer(images, kind, extras=extras)
  reply = rest.tfs_response(tensors, served_lib.tfs_outputs(m.task), columnar)
  return JSONResponse({**reply, "parameters": tensors.parameters} if tensors.parameters else reply)


async def v1_classify(request):
  m, limits = model_of(request), request.app.state.server.options.limits
  task = m.classifier(":classify")
  raw = await request.body()
  if content_type(request) != "application/json":
    return await upload(request, m, raw)
  # TF-Serving style: results per instance as [label, score] pairs
  k = max(1, min(query_k(request) or task.UPLOAD_K, len(m.spec.class_names)))
  body = await parse(len(raw), protocol.load_json, raw, limits)
  images, kind, _, extras = await parse(len(raw), rest.parse_tfs, body, m.spec, limits)
  probs = (await m.infer(images, kind, extras=extras))["probabilities"]
  return JSONResponse({"results": [[[m.spec.class_names[j], float(p[j])] for j in t]
                                   for p, t in zip(probs, task.top_k(probs, k))]})


async def upload_parts(request, raw, limits):
  """-> (image bytes, {field: [values]}) of an upload: the body itself and the query's fields, or a multipart
  request's one file and its other fields too (read from memory: the Gate has capped the body)."""
  fields = {}
  for key, value in request.query_params.multi_items():
    fields.setdefault(key, []).append(value)
  if content_type(request) != "multipart/form-data":
    return raw, fields
  form = await request.form(max_files=1, max_fields=limits.max_images, max_part_size=limits.max_body_bytes)
  files = [v for v in form.values() if hasattr(v, "read")]
  if not files:
    raise RequestError(400, "multipart upload has no file field; send the image as a file, e.g. -F image=@cat.png")
  for key, value in form.multi_items():
    if not hasattr(value, "read"):
      fields.setdefault(key, []).append(value)
  return await files[0].read(), fields


def reply_type(request, m):
  """The upload reply's media type the client's Accept asks for: JSON, or a PNG when the task draws one."""
  offers = ["application/json"] + (["image/png"] if served_lib.upload_png(m.task) else [])
  chosen = rest.negotiate(request.headers.get("accept"), offers)
  if chosen is None:
    raise RequestError(406, f"Accept: {request.headers.get('accept')!r} takes none of what model {m.name!r} "
                            f"answers an upload with: {', '.join(offers)}")
  return chosen


async def upload(request, m, raw):
  """An image as the body (curl --data-binary @cat.png) or a multipart file (curl -F image=@cat.png, the web
  page) -> the task's JSON of it, in the uploaded image's own coordinates, or its PNG when the client's Accept
  asks for image/png. The task's inputs beside the images come as query or form fields (?labels=cat&labels=dog)."""
  k, media = query_k(request), reply_type(request, m)
  raw, fields = await upload_parts(request, raw, m.options.limits)
  result = await upload_answer(m, raw, fields, k)
  if media == "image/png":
    return Response(served_lib.upload_png(m.task)(result), media_type=media, headers={"vary": "Accept"})
  return JSONResponse({"model": m.name, "version": str(m.version), **result}, headers={"vary": "Accept"})


async def upload_answer(m, raw, fields, k):
  """The task's JSON of one encoded image, with the inputs and parameters of `fields` ({name: [strings]})."""
  extras = rest.upload_extras(fields, m.spec, m.options.limits)
  image, to_source, size = await m.read_image(raw)
  outputs = await m.infer(image[None], "uint8", extras=extras)
  result = m.task.upload_result({n: v[0] for n, v in outputs.items()}, image.shape[:2],
                                to_source, size, outputs.class_names or m.spec.class_names, k)
  return {**result, "parameters": outputs.parameters} if outputs.parameters else result


async def hf_upload(m, raw, parameters):
  """Hugging Face's pipeline JSON ({"inputs": base64 image, "parameters": {...}}) -> its answer ([{"label",
  "score"}], best first), for a task that gives one (hf_result); its parameters mean what the task's
  HF_PARAMETERS says (zero-shot's candidate_labels: the labels; top_k: k)."""
  answer = served_lib.hf_result(m.task)
  if answer is None:
    raise RequestError(400, f"model {m.name!r} is a {m.task.NAME} model; it answers no Hugging Face pipeline JSON: "
                            "send the image as the body, or TF-Serving's {\"instances\": [...]}")
  names = served_lib.hf_parameters(m.task)
  unknown = sorted(set(parameters) - set(names))
  if unknown:
    raise RequestError(400, f"unknown parameter(s) {unknown}; model {m.name!r} takes {sorted(names)}")
  fields = {names[key]: [str(v) for v in (value if isinstance(value, list) else [value])]
            for key, value in parameters.items()}
  k = fields.pop("k", [None])[-1]
  if k is not None and not (k.isdigit() and int(k) > 0):
    raise RequestError(400, f"parameter top_k must be a positive integer, got {k!r}")
  result = await upload_answer(m, raw, fields, None if k is None else int(k))
  return JSONResponse(answer(result))


# ---------------------------------------------------------------- the page and metrics

async def index(request):
  server = request.app.state.server
  names = sorted(server.repo.models) if server.repo.budget is not None else sorted({m.name for m in server.served})
  return HTMLResponse(page.render(names, bool(server.options.api_keys)))


# ---------------------------------------------------------------- model repository extension (management.py)

async def repository_index(request):
  return JSONResponse(management.index(request.app.state.server.repo, management.body_object(await request.body())))


def repository_change(action):
  async def endpoint(request):
    server, name = request.app.state.server, request.path_params["name"]
    body = management.body_object(await request.body())
    await anyio.to_thread.run_sync(action, server.repo, server.options.control_mode, name, body)
    return JSONResponse({})
  return endpoint


async def model_stats(request):
  name, version = request.path_params.get("name"), request.path_params.get("version")
  return JSONResponse(management.statistics(request.app.state.server.repo, name, version))


async def model_config(request):
  server, m = request.app.state.server, model_of(request)
  return JSONResponse(management.config(m, server.repo.model(m.name).settings, m.options))


async def metrics_endpoint(request):
  return Response(prom.generate_latest(request.app.state.server.registry), media_type=prom.CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- the route table

def core_routes():
  """Every route the server answers for any task."""
  routes = [Route("/", index), Route("/metrics", metrics_endpoint), Route("/v2/health/live", live),
            Route("/v2/health/ready", ready), Route("/v2", server_metadata),
            Route("/v2/repository/index", repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", repository_change(management.load), methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", repository_change(management.unload), methods=["POST"]),
            Route("/v2/models/stats", model_stats)]
  for prefix in V2:
    routes += [Route(prefix + "/stats", model_stats), Route(prefix + "/config", leased(model_config)),
               Route(prefix, leased(model_metadata)), Route(prefix + "/ready", leased(model_ready)),
               Route(prefix + "/infer", leased(v2_infer, on_demand=True), methods=["POST"])]
  for prefix in V1:
    routes += [Route(prefix + ":predict", leased(v1_predict, on_demand=True), methods=["POST"]),
               Route(prefix + ":classify", leased(v1_classify, on_demand=True), methods=["POST"]),
               Route(prefix, v1_status)]
  return routes


def task_handlers(task_modules):
  """{suffix: {(task NAME, method): handler}} from every task's optional `routes()`."""
  found = {}
  for task in task_modules:
    for method, suffix, handler, *_ in getattr(task, "routes", lambda: ())():
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
    routes += [Route(prefix + suffix, leased(dispatcher(suffix, handlers), on_demand=True), methods=methods)
               for prefix in V1]
  return routes


def admin_routes(task_modules=None):
  """The task routes marked admin, as Starlette routes of their one method (only matched, never run): the Gate
  asks for an admin key on a request that one of them matches."""
  task_modules = tasks.TASKS.values() if task_modules is None else task_modules
  return [Route(prefix + suffix, None, methods=[method.upper()]) for task in task_modules
          for method, suffix, _, *admin in getattr(task, "routes", lambda: ())() if admin and admin[0]
          for prefix in V1]


# ---------------------------------------------------------------- errors, always {"error": ...}

async def request_error(request, exc):
  return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def http_error(request, exc):
  return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


EXCEPTION_HANDLERS = {RequestError: request_error, HTTPException: http_error}
