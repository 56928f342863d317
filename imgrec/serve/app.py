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

from starlette.applications import Starlette
from starlette.responses import JSONResponse

from imgrec import workdir as wd
from imgrec.errors import UserError
from imgrec.serve import auth, grpc_service, routes
from imgrec.serve.gate import Gate, make_metrics
from imgrec.serve.served import Options, ServedModel

log = logging.getLogger("imgrec")
access_log = logging.getLogger("imgrec.access")


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


class Server:
  """What the routes share (`request.app.state.server`): the served models, options, metrics, and whether
  loading failed."""

  def __init__(self, models, options):
    self.served, self.options, self.error = [ServedModel(*m) for m in models], options, None
    self.registry, self.metrics = make_metrics()

  def load_all(self):
    """Restores, compiles and warms up every model (in a background thread)."""
    try:
      for m in self.served:
        m.load(self.options, self.metrics)
      log.info("imgrec serve: ready: %s", ", ".join(f"{m.name}:{m.version}" for m in self.served))
    except Exception as e:  # reported by /v2/health/ready and the log; the process stays up for probes
      log.exception("model loading failed")
      self.error = f"{type(e).__name__}: {e}"

  def readiness(self):
    """None when every model is ready, else why not."""
    if self.error:
      return f"model loading failed: {self.error}"
    if not all(m.ready for m in self.served):
      return "models are loading and warming up"
    return None


@contextlib.asynccontextmanager
async def lifespan(app):
  """Starts gRPC (on this event loop, beside HTTP) and the loading thread; at shutdown stops gRPC (running
  calls finish) and the batchers (uvicorn has already drained in-flight requests; queued batches finish)."""
  server, grpc_server = app.state.server, None
  if server.options.grpc_address:
    service = grpc_service.Service(server.served, server.options, server.metrics, server.readiness,
                                   routes.version())
    grpc_server, app.state.grpc_port = await grpc_service.start(service, server.options.grpc_address,
                                                                server.options.limits)
  threading.Thread(target=server.load_all, name="model-loader", daemon=True).start()
  yield
  if grpc_server is not None:
    await grpc_server.stop(server.options.timeout_s)
  for m in server.served:
    m.close()


async def server_error(request, exc):
  log.exception("unhandled error on %s", request.url.path, exc_info=exc)
  return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)


def create_app(models, options=Options()):
  """`models`: [(name, version or None, workdir)] -> the ASGI app (the Gate around Starlette). Loading and
  warm-up start with the app's lifespan. Routes: routes.core_routes() and what the tasks add (routes.py)."""
  server = Server(models, options)
  app = Starlette(routes=routes.task_routes() + routes.core_routes(), lifespan=lifespan,
                  exception_handlers={**routes.EXCEPTION_HANDLERS, Exception: server_error})
  app.state.server, app.state.served, app.state.grpc_port = server, server.served, None
  return Gate(app, auth.digests(options.api_keys), options.limits.max_body_bytes, server.metrics)


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
