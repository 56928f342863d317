"""The Open Inference Protocol v2 over gRPC: KServe's `inference.GRPCInferenceService`, as `tritonclient.grpc`
and KServe clients speak it. It runs on the HTTP server's event loop (grpc.aio) and shares its models,
batchers, API keys, limits and metrics.

Messages come from kserve_v2.proto, compiled to the descriptor set kserve_v2.binpb (the command is in the
.proto) and loaded into a private descriptor pool: a client library in the same process (tritonclient
registers the same `inference.*` names in the default pool) cannot collide with it, and no generated code
ties the server to one protobuf release.

Errors, as gRPC status codes (HTTP status of the same error in brackets): INVALID_ARGUMENT (400, 415),
UNAUTHENTICATED (401), PERMISSION_DENIED (403), NOT_FOUND (404), RESOURCE_EXHAUSTED (413; a message over
the body limit is refused by gRPC itself with the same code), UNAVAILABLE (503: loading, queue full),
DEADLINE_EXCEEDED (504), INTERNAL (500). API keys travel as metadata `authorization: Bearer KEY` or
`x-api-key: KEY`; ServerLive and ServerReady are open, like the HTTP probes.
"""
import contextlib
import json
import logging
import os
import time

import anyio
import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from imgrec.serve import auth, management, protocol
from imgrec.serve.protocol import RequestError

log = logging.getLogger("imgrec")
access_log = logging.getLogger("imgrec.access")

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# The typed `contents` field of each datatype (kserve_v2.proto's InferTensorContents).
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _messages():
  """{method: (request class, response class)} from the checked-in descriptor set."""
  with open(os.path.join(os.path.dirname(__file__), "kserve_v2.binpb"), "rb") as f:
    files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
  pool = descriptor_pool.DescriptorPool()
  for file in files:
    pool.Add(file)
  return {m.name: (message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type))
          for m in pool.FindServiceByName(SERVICE).methods}


MESSAGES = _messages()


# ---------------------------------------------------------------- requests and replies (pure)

def parameter_value(p):
  """An InferParameter -> its Python value (None when unset)."""
  which = p.WhichOneof("parameter_choice")
  return getattr(p, which) if which else None


def set_parameter(p, value):
  """An InferParameter set to `value`: bool, int, float or str as themselves; anything else (a list of labels) as
  its JSON text, the one form the message has for it."""
  if isinstance(value, bool):
    p.bool_param = value
  elif isinstance(value, int):
    p.int64_param = value
  elif isinstance(value, float):
    p.double_param = value
  else:
    p.string_param = value if isinstance(value, str) else json.dumps(value)


def tensor_from_contents(name, datatype, shape, contents, count):
  """Typed InferTensorContents -> numpy array of `shape`, with the same checks as JSON data."""
  if datatype not in CONTENTS:
    raise RequestError(400, f"input '{name}': {datatype} has no typed contents field; send raw_input_contents")
  field = CONTENTS[datatype]
  values = getattr(contents, field)
  if len(values) != count:
    raise RequestError(400, f"input '{name}': {len(values)} values in contents.{field} for shape {shape} "
                            f"({count} elements)")
  if datatype == "BYTES":
    return protocol.bytes_array(list(values), shape)
  dtype = np.dtype(protocol.DTYPES[datatype])
  arr = np.array(values, np.float64 if dtype.kind == "f" else np.bool_ if dtype.kind == "b" else
                 np.uint64 if datatype == "UINT64" else np.int64)
  return protocol.cast_numbers(name, arr, dtype).reshape(shape)


def parse_infer(request, spec, limits):
  """ModelInferRequest -> protocol.InferRequest; raises RequestError (before any model work) when bad. Raw
  contents, when sent, come one per input in input order."""
  raw = request.raw_input_contents
  if raw and len(raw) != len(request.inputs):
    raise RequestError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
  tensors = {}
  for i, t in enumerate(request.inputs):
    name, datatype, shape = t.name, t.datatype, list(t.shape)
    count = protocol.check_input(name, datatype, shape, spec, limits)
    if raw:
      tensors[name] = protocol.tensor_from_binary(name, datatype, shape, raw[i], count)
    else:
      tensors[name] = tensor_from_contents(name, datatype, shape, t.contents, count)
  params = {k: parameter_value(v) for k, v in request.parameters.items()}
  images, kind, extras = protocol.request_inputs(tensors, spec, limits, params)
  outputs = None
  if request.outputs:
    outputs = [{"name": o.name, "parameters": {k: parameter_value(v) for k, v in o.parameters.items()}}
               for o in request.outputs]
  outputs = protocol.requested_outputs(outputs, True, spec)
  return protocol.InferRequest(images, kind, outputs, request.id or None, extras)


def infer_response(model, request, tensors):
  """-> ModelInferResponse with every output ({name: array}) in raw_output_contents, as Triton sends them (BYTES
  elements length-prefixed)."""
  resp = MESSAGES["ModelInfer"][1](model_name=model.name, model_version=str(model.version), id=request.id or "")
  for key, value in getattr(tensors, "parameters", {}).items():  # what the task says of its answer
    set_parameter(resp.parameters[key], value)
  for o in protocol.answered(request.outputs, tensors):
    entry, blob = protocol.output_entry({**o, "binary": True}, tensors[o["name"]], model.spec.classify)
    resp.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
    resp.raw_output_contents.append(blob)
  return resp


# ---------------------------------------------------------------- the service

class Service:
  """The RPC implementations over the server's shared state (app.Server: its repository, options, metrics,
  readiness)."""

  def __init__(self, server, version):
    self.server, self.repo, self.options, self.m = server, server.repo, server.options, server.metrics
    self.version = version
    self.keys, self.admin = auth.digests(self.options.api_keys), auth.digests(self.options.admin_keys)

  @contextlib.asynccontextmanager
  async def lease(self, name, version, on_demand=False):
    """The named version held for the whole call (as routes.leased does for HTTP)."""
    try:
      lease = self.repo.acquire(name, version, on_demand=False)
    except RequestError:
      if not (on_demand and self.repo.budget is not None):
        raise
      lease = await anyio.to_thread.run_sync(self.repo.acquire, name, version, True)
    try:
      yield lease.served
    finally:
      self.repo.release(lease)

  async def ServerLive(self, request, context):
    return MESSAGES["ServerLive"][1](live=True)

  async def ServerReady(self, request, context):
    return MESSAGES["ServerReady"][1](ready=self.server.readiness() is None)

  async def ModelReady(self, request, context):
    try:
      async with self.lease(request.name, request.version):
        pass
    except RequestError as e:
      if e.status != 503 and "is not loaded" not in e.message:  # unknown model or version: an error
        raise
      return MESSAGES["ModelReady"][1](ready=False)
    return MESSAGES["ModelReady"][1](ready=True)

  async def ServerMetadata(self, request, context):
    return MESSAGES["ServerMetadata"][1](name="imgrec", version=self.version, extensions=protocol.EXTENSIONS)

  async def ModelMetadata(self, request, context):
    async with self.lease(request.name, request.version) as m:
      meta = protocol.model_metadata(m, self.server.served)
    return MESSAGES["ModelMetadata"][1](**meta)

  async def ModelInfer(self, request, context):
    async with self.lease(request.model_name, request.model_version, on_demand=True) as m:
      req = await protocol.off_loop(request.ByteSize() > protocol.BIG_BODY_BYTES, parse_infer, request, m.spec,
                                    self.options.limits)
      remaining = context.time_remaining()  # the client's deadline, when it set one
      timeout = self.options.timeout_s if remaining is None else min(remaining, self.options.timeout_s)
      tensors = await m.infer(req.images, req.kind, timeout, req.extras)
      return await protocol.off_loop(protocol.count(req.images) > protocol.BIG_REPLY_IMAGES, infer_response, m, req,
                                     tensors)

  # ---------------------------------------------------------------- repository extension (management.py)

  async def RepositoryIndex(self, request, context):
    rows = management.index(self.repo, {"ready": request.ready})
    return json_format.ParseDict({"models": rows}, MESSAGES["RepositoryIndex"][1]())

  async def RepositoryModelLoad(self, request, context):
    body = {"parameters": {k: parameter_value(v) for k, v in request.parameters.items()}}
    await anyio.to_thread.run_sync(management.load, self.repo, self.options.control_mode, request.model_name, body)
    return MESSAGES["RepositoryModelLoad"][1]()

  async def RepositoryModelUnload(self, request, context):
    body = {"parameters": {k: parameter_value(v) for k, v in request.parameters.items()}}
    await anyio.to_thread.run_sync(management.unload, self.repo, self.options.control_mode, request.model_name,
                                   body)
    return MESSAGES["RepositoryModelUnload"][1]()

  async def ModelStatistics(self, request, context):
    stats = management.statistics(self.repo, request.name or None, request.version or None)
    return json_format.ParseDict(stats, MESSAGES["ModelStatistics"][1]())

  async def ModelConfig(self, request, context):
    async with self.lease(request.name, request.version) as m:
      config = management.config(m, self.repo.model(m.name).settings, m.options)
    return json_format.ParseDict({"config": config}, MESSAGES["ModelConfig"][1]())

  def handler(self):
    """A generic handler with auth, error mapping, metrics and access log around every method."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(self._wrap(name), request_deserializer=req.FromString,
                                                  response_serializer=resp.SerializeToString)
        for name, (req, resp) in MESSAGES.items()})

  def _wrap(self, name):
    impl, route = getattr(self, name), f"/{SERVICE}/{name}"

    async def call(request, context):
      t0, code = time.perf_counter(), grpc.StatusCode.OK
      try:
        key = auth.presented_key(dict(context.invocation_metadata()))
        if name in auth.ADMIN_METHODS:  # model management: admin keys only
          refused = auth.check_admin(key, self.keys, self.admin)
        else:
          refused = self.keys and name not in OPEN_METHODS and auth.check(key, self.keys)
        if refused:
          raise RequestError(*refused)
        return await impl(request, context)
      except RequestError as e:
        code = CODES.get(e.status, grpc.StatusCode.INTERNAL)
        await context.abort(code, e.message)
      except Exception as e:
        if isinstance(e, grpc.aio.AbortError):
          raise
        code = grpc.StatusCode.INTERNAL
        log.exception("unhandled error in %s", route)
        await context.abort(code, f"internal server error ({type(e).__name__})")
      finally:
        dt = time.perf_counter() - t0
        self.m["requests"].labels(route, "GRPC", code.name).inc()
        self.m["latency"].labels(route).observe(dt)
        access_log.info('%s "GRPC %s" %s %.1fms', context.peer(), route, code.name, dt * 1000)
    return call


async def start(service, address, limits):
  """Starts a grpc.aio server for `service` on the running event loop; -> (server, bound port)."""
  server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.max_body_bytes),
                                    ("grpc.max_send_message_length", -1)])
  server.add_generic_rpc_handlers((service.handler(),))
  try:
    port = server.add_insecure_port(address)
  except RuntimeError as e:
    raise RuntimeError(f"cannot listen for gRPC on {address}: {e}; is the port in use?") from None
  await server.start()
  return server, port
