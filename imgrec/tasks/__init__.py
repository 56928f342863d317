"""Tasks: what differs between recognition tasks. `config.task` names one; `get(name)` returns its module.

A NEW TASK touches only its own package and one line here:
  imgrec/tasks/NAME/settings.py   its config keys with defaults and comments, checks, resume rules, selection
  imgrec/tasks/NAME/__init__.py   the contract below (plain functions and constants; no base class)
  imgrec/tasks/NAME/*.py          its data sources, model heads, loss, metrics, plots, as it needs
  TASKS below                     one registry line
  (and, as any feature: tests/, a recipe in configs/, README.md, BENCHMARKS.md)
Nothing shared names a task: the trainer and its safety machinery (resume guard, signals, finite checks,
checkpoints, exact data order), config.py (the schema is the shared keys plus every task's settings()),
resume.py, the input pipeline (data/), steps.py, workdir.py, export.py and the server go through this contract.
Classification and detection are the worked examples; tests/test_layout.py checks the shared modules name no
task's targets, outputs or metrics.

The contract (NAME is the task's config.task value):
Settings (settings.py, re-exported; it imports nothing of imgrec but errors)
  settings() -> {section: {key: default}}   its own section (usually NAME) and keys it adds to `data`; every
      key appears in imgrec.config.defaults(). A key of another task set away from its default is refused.
  MAY_CHANGE: the dotted keys that may change when a run resumes (every other key of the task defines the run)
  SELECT: {metric: "max" | "min"} that model selection may use; DEFAULT_SELECT (config.select_metric "")
  validate(cfg): raises UserError for a bad value of its keys
  DECODED_SOURCES: data.source prefixes whose images are decoded on the host (so data.pp_* apply)
Data
  open_data(cfg) -> Dataset: .name, .class_names, .image_shape, .pp_eval, .split(name)
  A split: len(split); split.spec {feature: (shape, numpy dtype)}, "image" uint8 (H, W, C) among them;
  split.example(i, train, rng) -> {feature: array of that shape}, targets padded to static shapes, or None for an
  unreadable image under data.on_bad_image=skip. The pipeline stacks a batch's features and adds "mask" (bool,
  False on padding) to eval batches; it names no feature but "image".
  OPEN_CLASSES (optional, default False): True when the model does not depend on the class names (zero-shot from
  their text), so a trained run may be evaluated on another data set's classes (workdir.dataset then checks
  the image shape only, and evaluation takes the classes of the data it reads).
Model
  create_model(cfg, info) -> a Linen module; apply(variables, float NHWC, train) -> outputs (any pytree).
  Backbones come from the zoo (imgrec.models); `features=True` gives a backbone's multi-scale maps.
Training (pure, inside the jitted step; steps.make_train_step is the skeleton both go into)
  make_inputs(cfg, info) -> fn(rng, batch) -> (x, targets pytree): x the float images in [0, 1] after
      augmentation, or a dict of the model's inputs with them under "image" (standardised there by the step;
      an image-text model's token ids beside them); the model's apply takes x as it is
  make_loss(cfg, info, open_run) -> (fn(outputs, targets, x, aux) -> (scalar loss, {train metric: scalar}), aux)
      x: the model's standardised input; aux: a pytree passed to the compiled step as its third argument (None:
      none), e.g. classification's distillation teacher variables. open_run(path) restores another run
      (workdir.restore, params only) for a task that needs one.
Evaluation
  make_eval_fn(model, info, cfg) -> fn(variables, batch) -> {name: [N, ...] per example, "sums": pytree}
      steps.stream gathers the per-example outputs in split order, and ADDS UP "sums" over the batches on
      device (a confusion matrix; the task masks padding with batch["mask"]), the same on any number of devices.
  evaluate(outputs, split, info, cfg) -> (record: what metrics.jsonl keeps, summary: everything the report shows)
  RECORD: the record's keys (what `imgrec sweep --metric val.KEY` may name); LINE: the keys the trainer's and
      `imgrec eval`'s lines show (contract.line formats them)
  summary_images(record, summary) -> {TensorBoard tag: (plot function, its arguments but the output file)}
  augment_preview(cfg, ds) -> (plot function, its arguments but the file) of augmented examples, or None
Prediction and serving
  OUTPUTS: (contract.Output(name, datatype, per-example shape with named sizes, tfs), ...): the one description
      of what predict returns, used by the server (metadata, replies, TF-Serving), export (meta.json) and docs
  output_sizes(model, info) -> {named size: int}
  make_predict(model, mean, std, normalized=False) -> fn(variables, images) -> {output name: [B, ...]}: decoding
      included (inside jit, static shapes); images uint8, or with `normalized` float32 already standardised
  upload_result(outputs, input_hw, to_source, source_wh, class_names, k) -> the JSON of one uploaded image:
      `outputs` that image's {name: numpy array}, input_hw the model input's (height, width), to_source the map
      (sx, sy, tx, ty) from the model input's pixels to the upload's, source_wh the upload's (width, height), k
      the query's k or None. The page shows "predictions" as bars and draws "detections" on the image.
  classification_strings(values, k, class_names) (optional): OIP's classification extension
  Optional, for the server (imgrec/serve/served.py reads them):
  INPUTS: ((name, datatype, per-request shape[, required]), ...) taken beside the images (open-vocabulary
      labels as BYTES [N]); PARAMETERS: the request parameters it reads (strings: a prompt "template");
      IMAGES_OPTIONAL: a request may hold only the inputs beside the images (text to embed). They reach
      postprocess(outputs, inputs, context) -> ({output name: numpy array}, reply parameters, the class names its
      scores are over or None) on the host, per request (the batcher merges images of many requests; these
      inputs are not batched), raising UserError for a bad input (the client's 400), with its `context`:
  make_encoders(model, info) -> {name: contract.Encoder(fn(variables, x), x's per-example shape, dtype)}: pure
      functions beside predict that the server compiles and an export serialises (a two-tower model's text tower)
  serve_assets(run) -> {"meta": JSON-able dict, "files": {name: bytes}}: what serving needs beyond the weights (a
      tokenizer's files, the scores' scale); an export carries it
  serve_context(encoders, assets, events) -> context: built once per loaded model from the encoders (bound:
      fn(x) -> numpy) and assets; events(name) counts an event in /metrics (a cache's hits); its optional
      heavy(inputs) says whether postprocess may take long for a request (it then runs in a worker thread;
      without it, always)
  upload_png(result) -> PNG bytes of an upload's result, for a client whose Accept asks for image/png
  hf_result(result) -> an upload's result as Hugging Face's pipeline answers it ([{"label", "score"}]): the
      server then takes its JSON ({"inputs": base64 image, "parameters": {...}}) on the upload route;
      HF_PARAMETERS {its parameter: the task's input or parameter, or "k"} maps what that JSON's parameters mean
  routes() -> [(method, suffix, handler(request, served)[, admin])]: the task's own routes under
      /v1/models/NAME[/versions/V]SUFFIX (":verify", "/gallery/{item}"); `served` is the model version (its
      spec, infer(images, kind), read_image(body), `state` for what the task keeps between requests, workdir,
      step and records() of the run, items(name) / seconds(name) for the task's Prometheus series); admin True:
      a route that changes what every client gets (a gallery's enroll), which needs an admin key
Reports
  write_report(out_dir, outputs, split, info, summary): report.md, metrics.json and PNG plots
  headline(summary): the short JSON `imgrec eval --json` prints
"""
from imgrec.errors import UserError
from imgrec.tasks import classification, contract, detection, image_text, segmentation, verification
from imgrec.tasks.contract import Output  # noqa: F401  (re-exported: tasks.Output)

TASKS = {classification.NAME: classification, detection.NAME: detection, segmentation.NAME: segmentation,
         verification.NAME: verification, image_text.NAME: image_text}


def get(name):
  """The task module called `name` (config.task)."""
  if name not in TASKS:
    raise UserError(f"unknown task {name!r} (config.task); known tasks: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def for_config(cfg):
  """The task of a config, with its config.select_metric checked against the task's SELECT (a user error
  before any work)."""
  task = get(cfg.task)
  select_direction(task, cfg.select_metric or task.DEFAULT_SELECT)
  return task


def select_direction(task, metric):
  """"max" or "min": how model selection compares `metric` (config.select_metric) under `task`."""
  if metric not in task.SELECT:
    raise UserError(f"select_metric {metric!r} is not a metric of the {task.NAME} task; use one of "
                    f"{', '.join(sorted(task.SELECT))} (default {task.DEFAULT_SELECT})")
  return task.SELECT[metric]


def outputs(task, model, info):
  """[(name, datatype, shape)] of the task's OUTPUTS for this model and data, every size filled in."""
  return contract.resolve(task.OUTPUTS, task.output_sizes(model, info))


def tfs_outputs(task):
  """The output names TF-Serving :predict answers with (one: its values per row; several: an object per row)."""
  return tuple(o.name for o in task.OUTPUTS if o.tfs)


def encoders(task, model, info):
  """The task's contract.Encoders beside its predict ({} for a task without make_encoders)."""
  make = getattr(task, "make_encoders", None)
  return make(model, info) if make else {}


def assets(task, run):
  """The task's serve_assets of a restored run: {"meta": {...}, "files": {name: bytes}} (empty without one)."""
  make = getattr(task, "serve_assets", None)
  return make(run) if make else {"meta": {}, "files": {}}


def line(task, record):
  """An evaluation record as one line (the trainer's progress and final lines, `imgrec eval`)."""
  return contract.line(record, task.LINE)


def require_classification(cfg, command, workdir):
  """For the commands that can only mean classification (explanations of a class score, robustness accuracy,
  compression measured by accuracy): a clear error for a run of another task."""
  if cfg.task != classification.NAME:
    raise UserError(f"`imgrec {command}` works on classification runs; {workdir} is a {cfg.task} run "
                    f"(config.task={cfg.task!r})")
