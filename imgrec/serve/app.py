"""The server: models loaded from workdirs, a Starlette app with the OIP v2 / TF-Serving / upload routes, the
OIP v2 gRPC service beside it (grpc_service.py, same event loop), `serve()`.

Request path: Gate (access log, metrics, API key, body cap) -> route -> protocol parsing (all validation
before any work) -> the model's Batcher (bounded queue, padded compiled batch sizes, one replica per
device) -> response. gRPC requests take the same path from their own parser on.
Models are restored and warmed up in a background thread, so `/v2/health/live` answers at once and
`/v2/health/ready` turns true only when every padded size of every model has run once.
"""
import contextlib
import dataclasses
import logging
import os
import threading

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from imgrec import checkpoint_import, config as config_lib, workdir as wd
from imgrec.errors import UserError
from imgrec.serve import auth, grpc_service, repository, routes
from imgrec.serve.gate import Gate, make_metrics
from imgrec.serve.served import Options, ServedModel

log = logging.getLogger("imgrec")
access_log = logging.getLogger("imgrec.access")


def parse_model_arg(arg):
  """`W`, `NAME=W` or `NAME:VERSION=W` -> (name, version or None, workdir). The default name is W's basename;
  the default version is the restored checkpoint's step. W is a run or an `imgrec import` folder; its files are
  read here, so a damaged one is one line before the server starts."""
  name, version, path = None, None, arg
  if "=" in arg:
    left, path = arg.split("=", 1)
    name, _, version = left.partition(":")
    if version and not (version.isdigit() and int(version) > 0):
      raise UserError(f"--workdir {arg}: version {version!r} must be a positive integer (NAME:VERSION=DIR)")
  path = os.path.abspath(path)
  if wd.is_import(path):
    checkpoint_import.run_files(path)
  elif not os.path.isfile(os.path.join(path, wd.CONFIG_FILE)):
    raise UserError(f"--workdir {arg}: {path} has no config.json; pass a workdir written by `imgrec train` or a "
                    "folder written by `imgrec import`")
  else:
    config_lib.load_saved(os.path.join(path, wd.CONFIG_FILE))  # a truncated or hand-broken file: one line here
    wd.read_info(path)
  name = name or os.path.basename(path.rstrip("/"))
  if not name or not repository.NAME_RE.fullmatch(name) or ".." in name:
    raise UserError(f"--workdir {arg}: model name {name!r} is not usable in a URL; use NAME=DIR")
  return name, (int(version) if version else None), path


class Server:
  """What the routes share (`request.app.state.server`): the model repository (the --workdir models and those of
  --model-repository), options, metrics, and the start-up state."""

  def __init__(self, models, options):
    self.options, self.loading = options, True
    self.registry, self.metrics = make_metrics()
    self.repo = repository.Repository(self.load_version, options.model_repository, options.control_mode,
                                      options.memory_budget, drain_timeout=options.timeout_s + 5,
                                      on_evict=lambda n, v: self.metrics["evictions"].labels(n, str(v)).inc())
    for name, version, path in models:
      self.repo.add_workdir(name, version, path)
    self.fixed = sorted({name for name, _, _ in models})  # readiness waits for these
    self.stop = threading.Event()

  def load_version(self, name, version, path, settings, stats):
    """The repository's loader: restores, compiles and warms up one version -> ServedModel."""
    options = self.options
    if settings.batch_sizes:
      options = dataclasses.replace(options, batch_sizes=settings.batch_sizes)
    m = ServedModel(name, version, path)
    m.load(options, self.metrics, stats)
    return m

  @property
  def served(self):
    """The loaded ServedModels (metadata, the page, gRPC)."""
    return [m for _, _, m in self.repo.ready()]

  def startup_models(self):
    """The models loaded at start: all (mode none and poll), or the --workdir ones and --load-model (explicit)."""
    if self.options.control_mode != "explicit" or "*" in self.options.load_models:
      return None
    return sorted(set(self.fixed) | set(self.options.load_models))

  def load_all(self):
    """Restores, compiles and warms up the start-up models (in a background thread); in poll mode then follows
    the repository folder. A model that fails is UNAVAILABLE with its reason; the server stays up."""
    try:
      self.repo.load_all(self.startup_models())
      log.info("imgrec serve: ready: %s", ", ".join(f"{n}:{v}" for n, v, _ in self.repo.ready()) or "no models")
    finally:
      self.loading = False
    while self.options.control_mode == "poll" and not self.stop.wait(self.options.poll_secs):
      try:
        self.repo.poll()
      except Exception:  # a poll that fails (a folder moved mid-scan) is retried at the next one
        log.exception("model repository poll failed")

  def readiness(self):
    """None when the start-up loads are done and every --workdir model is READY, else why not."""
    if self.loading:
      return "models are loading and warming up"
    ready = {n for n, _, _ in self.repo.ready()}
    failed = [f"{n}: {self.repo.index_of(self.repo.models[n])[0]['reason']}" for n in self.fixed if n not in ready]
    return f"model loading failed: {'; '.join(failed)}" if failed else None

  def close(self):
    self.stop.set()
    self.repo.close()


@contextlib.asynccontextmanager
async def lifespan(app):
  """Starts gRPC (on this event loop, beside HTTP) and the loading thread; at shutdown stops gRPC (running
  calls finish) and the batchers (uvicorn has already drained in-flight requests; queued batches finish)."""
  server, grpc_server = app.state.server, None
  if server.options.grpc_address:
    service = grpc_service.Service(server, routes.version())
    grpc_server, app.state.grpc_port = await grpc_service.start(service, server.options.grpc_address,
                                                                server.options.limits)
  threading.Thread(target=server.load_all, name="model-loader", daemon=True).start()
  yield
  if grpc_server is not None:
    await grpc_server.stop(server.options.timeout_s)
  await anyio.to_thread.run_sync(server.close)


async def server_error(request, exc):
  log.exception("unhandled error on %s", request.url.path, exc_info=exc)
  return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)


def create_app(models, options=Options()):
  """`models`: [(name, version or None, workdir)] -> the ASGI app (the Gate around Starlette). Loading and
  warm-up start with the app's lifespan. Routes: routes.core_routes() and what the tasks add (routes.py)."""
  server = Server(models, options)
  app = Starlette(routes=routes.task_routes() + routes.core_routes(), lifespan=lifespan,
                  exception_handlers={**routes.EXCEPTION_HANDLERS, Exception: server_error})
  app.state.server, app.state.grpc_port = server, None
  return Gate(app, auth.digests(options.api_keys), options.limits.max_body_bytes, server.metrics,
              auth.digests(options.admin_keys), routes.admin_routes())


def serve(model_args, host="127.0.0.1", port=8000, api_keys_file=None, options=Options(), grpc_port=None,
          admin_keys_file=None):
  """Runs the server (HTTP on `port`, and gRPC on `grpc_port` when given) until SIGINT/SIGTERM; uvicorn then
  stops accepting, drains in-flight requests, and the lifespan shutdown stops gRPC (letting running calls
  finish), finishes the queued batches and unloads every model."""
  import uvicorn
  models = [parse_model_arg(a) for a in model_args or ()]
  names = [(n, v) for n, v, _ in models]
  if len(set(names)) != len(names):
    raise UserError(f"the same model name and version is given twice: {names}")
  if not models and not options.model_repository:
    raise UserError("nothing to serve: give --workdir W (repeatable) and/or --model-repository DIR")
  if options.model_repository:
    options = dataclasses.replace(options, model_repository=os.path.abspath(options.model_repository))
    repository.scan(options.model_repository)  # not a folder: one line now
    if options.control_mode != "explicit" and options.load_models:
      raise UserError(f"--load-model applies to --model-control-mode explicit (not {options.control_mode})")
  if api_keys_file:
    options = dataclasses.replace(options, api_keys=tuple(auth.load_keys(api_keys_file)))
  if admin_keys_file:
    options = dataclasses.replace(options, admin_keys=tuple(auth.load_keys(admin_keys_file)))
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
