"""What the server holds for one model version: restored variables, warmed batchers per input kind, its task,
and the adapters through which the serve package reads a task's description of its inputs and outputs.

Every route (HTTP, gRPC, a task's own) reaches a model through `ServedModel`: `spec` for the parsers,
`infer(images, kind)` for the outputs, `read_image(request)` for an uploaded image, `state` for what a task's
routes keep between requests (a face gallery); for a task's routes also `workdir`, `step` (the restored
checkpoint's), `records()` (the run's metrics.jsonl: a calibration the run evaluated) and `items(name)` /
`seconds(name)` (its Prometheus series: what the routes keep, how long their work takes).
"""
import asyncio
import dataclasses
import time
import zipfile

import anyio
import jax
import numpy as np

from imgrec import export, tasks, workdir as wd
from imgrec.errors import UserError
from imgrec.serve import protocol
from imgrec.serve.batcher import Batcher, QueueFull, Replica
from imgrec.serve.protocol import RequestError


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
  # Model repository (repository.py): DIR/NAME/VERSION/ folders, how they are loaded, and who may change that.
  model_repository: str | None = None
  control_mode: str = "none"  # none | explicit | poll
  load_models: tuple = ()     # explicit mode: the models loaded at start ("*": all)
  poll_secs: float = 15.0     # poll mode: seconds between scans of the repository folder
  memory_budget: int | None = None  # bytes loaded versions may hold; a request loads, LRU idle ones are evicted
  admin_keys: tuple = ()      # keys for load / unload / index and tasks' admin routes (a gallery's enroll, delete);
                              # with api_keys set, an inference key gets 403 there


# ---------------------------------------------------------------- the task's description, read in one place

def served_outputs(task, model, info):
  """The task's served outputs, every size filled in: ((name, datatype, per-example shape), ...)."""
  return tuple(tasks.outputs(task, model, info))


def tfs_outputs(task):
  """The output names TF-Serving :predict answers with."""
  return tasks.tfs_outputs(task)


def served_inputs(task):
  """The inputs a task takes beside the images (protocol.InputSpec) from its optional INPUTS: tuples (name,
  datatype, per-request shape[, required=True]), e.g. (("labels", "BYTES", ("N",)),) for open-vocabulary
  classes; a named size is free (-1 in the metadata). They reach the task's `postprocess(outputs, inputs)` as
  {name: numpy array} (BYTES: an object array of bytes), not the compiled model: they are per request, while
  the batcher merges the images of many requests."""
  return tuple(protocol.InputSpec(*i) for i in getattr(task, "INPUTS", ()))


class Reply(dict):
  """A request's served outputs {name: numpy array}; what the task says of them in the reply's `parameters` (e.g.
  the labels it cut to the text tower's length); `class_names`: the classes its scores are over when the request
  chose them (open-vocabulary labels), else None (the model's own)."""

  def __init__(self, outputs, parameters=None, class_names=None):
    super().__init__(outputs)
    self.parameters, self.class_names = dict(parameters or {}), class_names


def postprocess(task, outputs, extras, context):
  """The task's served outputs of a batch as a Reply: its predict's, or for a task with INPUTS its
  `postprocess(outputs, inputs, context) -> (outputs, reply parameters, class names or None)` (per-request work
  on the host, e.g. scoring images against request labels with the text tower that `context` holds)."""
  if not served_inputs(task):
    return Reply({name: np.asarray(value) for name, value in outputs.items()})
  try:
    return Reply(*task.postprocess(outputs, extras, context))
  except UserError as e:  # the task's word on a bad input (an empty label list): the client's error
    raise RequestError(400, str(e)) from None


def bind_encoder(encoder, variables, max_batch=1024):
  """A task's contract.Encoder with `variables` bound -> `fn(x [M, ...]) -> numpy [M, ...]` for any M: rows padded
  to a power of two (at least 8), so a few compiled sizes serve every request, and cut into chunks of max_batch."""
  jitted = jax.jit(encoder.fn)

  def run(x):
    x, out = np.asarray(x, encoder.dtype), []
    for i in range(0, len(x), max_batch):
      chunk = x[i:i + max_batch]
      size = max(8, 1 << (len(chunk) - 1).bit_length())
      padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
      out.append(np.asarray(jitted(variables, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
  return run


def serve_context(task, loaded, events):
  """What the task's postprocess works with (its optional `serve_context(encoders, assets, events)`), or None.
  `events(name)` counts an event of this model (imgrec_task_events)."""
  make = getattr(task, "serve_context", None)
  return make(loaded.encoders, loaded.assets, events) if make else None


def hf_result(task):
  """The task's optional `hf_result(result)` (an upload's answer as Hugging Face's pipeline gives it), or None."""
  return getattr(task, "hf_result", None)


def hf_parameters(task):
  """{Hugging Face pipeline parameter: the task's input or parameter name, or "k"} (its HF_PARAMETERS)."""
  return dict(getattr(task, "HF_PARAMETERS", {}))


def upload_png(task):
  """The task's optional `upload_png(result) -> PNG bytes` (an upload's reply as an image), or None."""
  return getattr(task, "upload_png", None)


# ---------------------------------------------------------------- loading and compiling

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
  outputs: tuple  # served_outputs: (name, datatype, per-example shape)
  baked: int = 0  # bytes of weights baked into the program (an export artifact), not in `variables`
  encoders: dict = dataclasses.field(default_factory=dict)  # {name: fn(x) -> numpy} (bind_encoder), e.g. "text"
  assets: dict = dataclasses.field(default_factory=dict)    # the task's serve_assets: {"meta": {...}, "files": {}}


def load_workdir(workdir):
  """A trained workdir or an `imgrec import` folder, restored without optimiser state, or an `imgrec export`
  artifact (a .zip: its predict function with the weights inside) -> Loaded."""
  if workdir.endswith(".zip") and not wd.is_import(workdir):
    return load_export(workdir)
  run = wd.restore(workdir, params_only=True)
  task = tasks.get(run.cfg.task)
  encoders = {name: bind_encoder(e, run.variables) for name, e in tasks.encoders(task, run.model, run.info).items()}
  return Loaded(run.variables, run.info, int(run.state.step), make_predict(task, run.model, run.info["mean"],
                run.info["std"]), task, served_outputs(task, run.model, run.info), 0, encoders,
                tasks.assets(task, run))


def load_export(path):
  """An export artifact -> Loaded: uint8 inputs only (its normalisation is baked in), the task's outputs with
  the sizes the artifact returns."""
  predictor = export.load(path)
  meta, exported = predictor.meta, predictor.exported
  task = tasks.get(meta.get("task", tasks.classification.NAME))
  info = {"class_names": meta["class_names"], "image_shape": meta["image_shape"], "pp_eval": meta.get("pp_eval", "")}
  if meta.get("format") != export.FORMAT:
    raise UserError(f"{path} is an export of format {meta.get('format')!r}; this server reads {export.FORMAT!r} "
                    "(every output named, as the task describes them): export the run again with `imgrec export`")
  outputs = tuple((o["name"], o["datatype"], tuple(o["shape"][1:])) for o in meta["outputs"])
  with zipfile.ZipFile(path) as z:  # the weights are constants in the serialised modules: their size stands for them
    baked = sum(z.getinfo(n).file_size for n in z.namelist() if n.endswith(".jaxexport"))
  encoders = {name: bind_encoder(e, {}) for name, e in predictor.encoders.items()}
  return Loaded({}, info, int(meta.get("step", 0)), {"uint8": lambda variables, images: exported.call(images)},
                task, outputs, baked, encoders, predictor.assets)


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


def model_spec(task, info, outputs):
  """The parsers' view of a model (protocol.ModelSpec)."""
  names = tuple(info["class_names"])
  classify = getattr(task, "classification_strings", None)
  return protocol.ModelSpec(tuple(info["image_shape"]), names, info.get("pp_eval", ""), outputs,
                            classify and (lambda values, k: classify(values, k, names)), served_inputs(task),
                            tuple(getattr(task, "PARAMETERS", ())), bool(getattr(task, "IMAGES_OPTIONAL", False)))


class ServedModel:
  """One model version: restored variables and a warmed Batcher per input kind."""

  def __init__(self, name, version, workdir):
    self.name, self.version, self.workdir = name, version, workdir
    self.spec, self.batchers, self.ready, self.task, self.options = None, {}, False, None, Options()
    self.state = {}  # what the task's own routes keep for this model between requests
    self.context = None  # what the task's postprocess works with (its serve_context): a text tower and its cache
    self.step, self.stats, self.metrics, self.nbytes, self.platform = None, None, None, 0, "cpu"

  def load(self, options, metrics, stats=None):
    """Restores, compiles every padded size and runs it once. `stats`: the version's repository.Stats."""
    loaded = load_workdir(self.workdir)
    variables, fns, self.task, self.options = loaded.variables, dict(loaded.fns), loaded.task, options
    self.version, self.step = self.version or loaded.step, loaded.step
    self.spec = model_spec(self.task, loaded.info, loaded.outputs)
    self.stats, self.metrics = stats, metrics
    self.context = serve_context(self.task, loaded, self.events)
    if not options.float_inputs:
      fns.pop("float32", None)
    devices = jax.local_devices()[:options.replicas or None]
    self.platform = devices[0].platform
    label = f"{self.name}:{self.version}"
    on_batch = self._on_batch(metrics["batch"].labels(label).observe)
    for kind, fn in fns.items():
      dtype = np.uint8 if kind == "uint8" else np.float32
      replicas = [compile_replica(fn, variables, d, options.batch_sizes, self.spec.image_shape, dtype)
                  for d in devices]
      self.batchers[kind] = Batcher(replicas, options.batch_sizes, options.max_delay_ms / 1000, options.max_queue,
                                    on_batch, f"batcher-{label}-{kind}", options.pipeline)
      metrics["queue"].labels(label, kind).set_function(self.batchers[kind].depth)
    # What this version holds: its parameters on every replica (compiled programs and buffers come on top).
    held = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(variables)) + loaded.baked
    self.nbytes = held * len(devices)
    self.ready = True

  def _on_batch(self, observe):
    labels = (self.name, str(self.version))

    def on_batch(n):
      observe(n)
      self.metrics["model_batches"].labels(*labels).inc()
      if self.stats is not None:
        self.stats.batch(n)
    return on_batch

  def _record(self, ok, images, t0, fut=None):
    """Per-version statistics (Triton's) and per-model Prometheus series of one request."""
    end = time.monotonic()
    launched = getattr(fut, "launched", None)  # set by the batcher when the request's batch started
    queue_s, compute_s = (launched - t0, end - launched) if launched else (None, None)
    if self.stats is not None:
      self.stats.request(ok, images, end - t0, queue_s, compute_s)
    if self.metrics is not None:
      labels = (self.name, str(self.version))
      self.metrics["model_requests"].labels(*labels, "success" if ok else "failure").inc()
      if ok:
        self.metrics["model_images"].labels(*labels).inc(images)
        if launched:
          self.metrics["model_queue"].labels(*labels).observe(queue_s)
          self.metrics["model_compute"].labels(*labels).observe(compute_s)

  async def infer(self, images, kind, timeout=None, extras=None):
    """-> the task's served outputs, a Reply {name: numpy array [B, ...]} (its postprocess, given the request's
    `extras` {input name: array, parameter: str} when the task takes INPUTS). `images` None: a request of only
    the inputs beside them (a model whose images are optional). `timeout`: seconds, default the server's."""
    if kind not in self.batchers:
      raise RequestError(400, "FP32 inputs are disabled on this server; send UINT8 pixels or encoded images")
    if images is not None and len(images) == 0:
      raise RequestError(400, "the request holds no images")
    timeout = self.options.timeout_s if timeout is None else timeout
    t0, fut, n = time.monotonic(), None, protocol.count(images)
    try:
      outputs = {}
      if images is not None:
        try:
          fut = self.batchers[kind].submit(images)
        except QueueFull as e:
          raise RequestError(503, f"server busy: {e}; retry shortly", {"retry-after": "1"})
        try:
          async with asyncio.timeout(timeout):  # on expiry the future is cancelled, so the batcher skips it
            outputs = await asyncio.wrap_future(fut)
        except TimeoutError:
          raise RequestError(504, f"inference did not finish within {timeout} s")
      # a task's own host work runs off the event loop when it may be long (text encoding on a cache miss)
      heavy = self.context is not None and getattr(self.context, "heavy", lambda inputs: True)(extras or {})
      result = await protocol.off_loop(heavy, postprocess, self.task, outputs, extras or {}, self.context)
    except BaseException:
      self._record(False, n, t0, fut)
      raise
    self._record(True, n, t0, fut)
    return result

  async def read_image(self, raw):
    """An encoded upload -> (uint8 image of the model's shape, map to the upload's pixels, its (width, height))."""
    if not raw:
      raise RequestError(400, "empty body; send an image, e.g. curl --data-binary @cat.png URL")
    return await anyio.to_thread.run_sync(protocol.decode_upload, raw, self.spec, self.options.limits)

  def records(self):
    """The run's metrics.jsonl records (workdir.read_metrics): its evaluations, e.g. a calibrated threshold."""
    return wd.read_metrics(self.workdir)

  def items(self, item):
    """This model's gauge of what its task's routes keep under the name `item` (imgrec_task_items)."""
    return self.metrics["task_items"].labels(f"{self.name}:{self.version}", item)

  def events(self, event):
    """This model's counter of its task's serving events named `event` (imgrec_task_events)."""
    return self.metrics["task_events"].labels(f"{self.name}:{self.version}", event)

  def seconds(self, work):
    """This model's histogram of how long its task's routes take for `work` (imgrec_task_seconds)."""
    return self.metrics["task_seconds"].labels(f"{self.name}:{self.version}", work)

  def classifier(self, route):
    """This model's task module, for the route that only classification answers (TF-Serving :classify)."""
    if self.task.NAME != tasks.classification.NAME:
      raise RequestError(400, f"model {self.name!r} is a {self.task.NAME} model; {route} serves classifiers "
                         f"only: use /v1/models/{self.name}:predict (TF-Serving JSON, or the image itself as the "
                         "body) or the OIP v2 /v2/models/{name}/infer route")
    return self.task

  def close(self):
    """Finishes what is queued, then lets go of the batchers: their replicas hold the device copies of the
    parameters and the compiled programs, so nothing of this version stays referenced (metrics included)."""
    label = f"{self.name}:{self.version}"
    for kind, b in self.batchers.items():
      b.close()
      if self.metrics is not None:
        try:
          self.metrics["queue"].remove(label, kind)
        except KeyError:
          pass
    self.batchers, self.ready = {}, False
