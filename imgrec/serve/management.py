"""Triton's model repository extension and statistics over the server's `Repository`: what HTTP answers as JSON
and gRPC as the same-named messages (grpc_service.py).

  POST /v2/repository/index                  [{name, version, state, reason}], `{"ready": true}` filters
  POST /v2/repository/models/NAME/load       an empty body, `{}` or `{"parameters": {...}}`
  POST /v2/repository/models/NAME/unload
  GET  /v2/models[/NAME[/versions/V]]/stats  {"model_stats": [...]}: counts, durations, memory
  GET  /v2/models/NAME[/versions/V]/config   the served version's configuration, Triton's field names

Control modes (`--model-control-mode`): "none" loads everything at start and refuses load/unload; "explicit"
loads what `--load-model` names, then only these calls change it; "poll" follows the repository folder and
refuses them too (as Triton does: the folder is the one source of truth).
"""
import orjson

from imgrec.serve.protocol import RequestError

PLATFORM = "jax_flax"
LOAD_PARAMETERS = frozenset({"unload_dependents"})  # accepted and ignored (imgrec has no ensembles)


def body_object(raw):
  """A management call's body: empty, or a JSON object (parameters)."""
  if not raw or not raw.strip():
    return {}
  try:
    body = orjson.loads(raw)
  except orjson.JSONDecodeError as e:
    raise RequestError(400, f"body is not valid JSON: {e}")
  if not isinstance(body, dict):
    raise RequestError(400, "body must be a JSON object, e.g. {} or {\"ready\": true}")
  return body


def index(repo, body):
  ready = body.get("ready", False)
  if not isinstance(ready, bool):
    raise RequestError(400, "'ready' must be true or false")
  return repo.index(ready_only=ready)


def check_mode(mode, action):
  if mode != "explicit":
    raise RequestError(400, f"{action} is refused in model control mode {mode!r}; start the server with "
                            "--model-control-mode explicit to load and unload models through the API")


def parameters(body):
  params = body.get("parameters") or {}
  if not isinstance(params, dict):
    raise RequestError(400, "'parameters' must be an object")
  unknown = sorted(set(params) - LOAD_PARAMETERS)
  if unknown:
    raise RequestError(400, f"unsupported load/unload parameters {unknown}: imgrec reads a model's settings from "
                            "DIR/NAME/model.json and its versions from DIR/NAME/VERSION/")
  return params


def load(repo, mode, name, body):
  """Loads (or reloads what changed on disk of) model `name`; blocks until done (call it off the event loop)."""
  check_mode(mode, "loading a model")
  parameters(body)
  repo.load(name)


def unload(repo, mode, name, body):
  check_mode(mode, "unloading a model")
  parameters(body)
  repo.unload(name)


def statistics(repo, name=None, version=None):
  """{"model_stats": [...]} of every version known (of `name`, of its `version`), loaded or not."""
  if name is None:
    models = [repo.model(n) for n in sorted(repo.models)]
  else:
    models = [repo.model(name)]
  rows = []
  for m in models:
    for v in sorted(m.versions.values(), key=lambda v: v.version):
      if version not in (None, "") and str(v.version) != str(version):
        continue
      slot = v.slot
      rows.append({"name": m.name, "version": str(v.version), **v.stats.as_dict(), "batch_stats": [],
                   "memory_usage": [{"type": "CPU" if _on_cpu(slot) else "GPU", "id": 0,
                                     "byte_size": slot.nbytes if slot is not None else 0}]})
  if name is not None and version not in (None, "") and not rows:
    raise RequestError(404, f"model {name!r} has no version {version!r}")
  return {"model_stats": rows}


def _on_cpu(slot):
  served = slot.served if slot is not None else None
  return getattr(served, "platform", "cpu") == "cpu"


DATA_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
              "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING"}


def config(served, settings, options):
  """A served version's configuration in Triton's model-config field names (the JSON of ModelConfig)."""
  spec = served.spec
  policy = {"latest": {"num_versions": settings.policy[1]}} if settings.policy[0] == "latest" else (
      {"all": {}} if settings.policy[0] == "all" else {"specific": {"versions": list(settings.policy[1])}})
  sizes = list(settings.batch_sizes or options.batch_sizes)
  k = len(spec.class_names)
  return {"name": served.name, "platform": PLATFORM, "backend": "imgrec", "version_policy": policy,
          "max_batch_size": max(options.limits.max_images, max(sizes)),
          "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": list(spec.image_shape)}],
          "output": [{"name": n, "data_type": DATA_TYPES.get(d, "TYPE_INVALID"),
                      "dims": [k if s == "K" else s for s in shape]} for n, d, shape in spec.outputs],
          "dynamic_batching": {"preferred_batch_size": sizes,
                               "max_queue_delay_microseconds": int(options.max_delay_ms * 1000)}}
