"""Tasks: what differs between recognition tasks. `config.task` names one; `get(name)` returns its module
(`for_config(cfg)` also checks config.select_metric against its SELECT). A new task is a module (or package)
here, added to TASKS.

Everything else is shared and names no task's targets: the trainer and its safety machinery (resume guard,
signals, finite checks, checkpoints, exact data order), the input pipeline, `steps` (the step's skeleton:
accumulation, EMA, the optimiser; `stream`, the one evaluation loop), the server's batcher and `export`.
A task module gives, as plain functions and constants (no base class); NAME is its config.task name:

Data
  open_data(data_cfg) -> Dataset        its sources by name (classification: digits, idx:, folder:, tfds:...)
  A split: len(split); split.spec: {feature: (shape, numpy dtype)}, "image" uint8 (H, W, C) among them;
  split.example(i, train, rng) -> {feature: array of that shape}, targets padded to static shapes (detection:
  "boxes" float32 [data.max_boxes, 4] x0,y0,x1,y1 in the preprocessed image's pixels, "classes" int32
  [data.max_boxes], "box_mask" bool [data.max_boxes]), or None for an unreadable image under
  data.on_bad_image=skip. The pipeline stacks the features of a batch and adds "mask" to eval batches; it names
  no feature but "image".
  (classification also keeps `split.labels` and `split.get(indices)` for its own commands; an in-memory split
  may give `take(indices) -> {feature: [N, ...]}`, the pipeline's fast path.)
Model
  create_model(cfg, info) -> a Linen module; apply(variables, float NHWC, train) -> outputs (any pytree).
  Backbones come from the zoo (imgrec.models); a head that needs intermediate features asks the backbone for them.
Training (pure, inside the jitted step)
  make_inputs(cfg, info) -> fn(rng, batch) -> (float images in [0, 1] after augmentation, targets pytree)
  make_loss(cfg, info, teacher=None) -> fn(outputs, targets, x, aux) -> (scalar loss, {train metric: scalar})
      x: the model's standardised input; aux: the step's optional third argument (None unless the task uses
      one: classification's distillation passes the teacher's variables there, with `x` for the teacher).
      `teacher`: the restored run of cfg.distill.teacher (a workdir.Run), when set; a task without
      distillation refuses it. (Changed from `make_loss(cfg, info) -> fn(outputs, targets)`: distillation
      needs the input and the teacher's variables, and those must be arguments of the compiled step.)
  steps.make_train_step(model, tx, mean, std, inputs, loss, cfg) is the skeleton both go into.
Evaluation
  make_eval_fn(model, mean, std, tta=False) -> fn(variables, batch) -> per-example outputs (run by steps.stream)
  evaluate(outputs, split, info) -> (record: what metrics.jsonl keeps, summary: everything the report shows)
  RECORD: the keys of that record (what `imgrec sweep --metric val.KEY` may name)
  SELECT: {metric: "max" | "min"}, the metrics model selection may use; DEFAULT_SELECT
  progress_line(record), final_line(record): the trainer's line per evaluation (after "step N: ") and at the end
  summary_images(record, summary) -> {TensorBoard tag: (plot function, its arguments but the output file)}
  augment_preview(cfg, ds) -> (plot function, its arguments but the file) of augmented training examples drawn
      from the open data set `ds`, or None
Prediction and serving
  make_predict(model, mean, std, normalized=False) -> fn(variables, images) -> outputs [B, ...] (any pytree),
  decoding included (inside jit, static shapes); images uint8, or with `normalized` float32 already
  standardised by the client (the server's FP32 input); PREDICTS: what it returns, in words (an export's
  meta.json "output")
  postprocess(outputs) -> {output name: numpy array [B, ...]}: on the host, in the server, after the batcher
  OUTPUTS: [(name, datatype, per-example shape)], sizes the model decides left symbolic; outputs_of(model, info):
  the same with every size filled in (OIP model metadata, an export's meta.json)
  TFS_OUTPUTS: the names TF-Serving :predict answers with (one: its values per row, as a one-output signature
  does; several: a {name: value} object per row, or per name in the columnar form)
  upload_result(outputs, input_hw, to_source, source_wh, class_names, k) -> the JSON of one uploaded image (an
  image body to :predict, or :classify for classifiers; the web page): `outputs` that image's {name: array},
  input_hw the model input's (height, width), to_source the map (sx, sy, tx, ty) from the model input's pixels
  to the upload's (preprocess.for_model_with_map), source_wh the upload's (width, height), k the query's k or
  None. The page shows "predictions" [{label, probability}] as bars and draws "detections" [{label, score,
  box: [x0, y0, x1, y1] in the upload's pixels}] on the image; the server knows neither.
  classification_strings(values, k, class_names) (optional): OIP's classification extension; without it a
  request asking for it is refused. TF-Serving :classify answers classifiers only.
Reports
  write_report(out_dir, outputs, split, info, summary): report.md, metrics.json and PNG plots
  headline(summary): the short JSON `imgrec eval --json` prints; eval_line(summary): the line `imgrec eval` prints
"""
from imgrec.errors import UserError
from imgrec.tasks import classification, detection

TASKS = {classification.NAME: classification, detection.NAME: detection}


def get(name):
  """The task module called `name` (config.task)."""
  if name not in TASKS:
    raise UserError(f"unknown task {name!r} (config.task); known tasks: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def for_config(cfg):
  """The task of a config, with its config.select_metric checked against the task's SELECT (a user error
  before any work)."""
  task = get(cfg.task)
  select_direction(task, cfg.select_metric)
  return task


def select_direction(task, metric):
  """"max" or "min": how model selection compares `metric` (config.select_metric) under `task`."""
  if metric not in task.SELECT:
    raise UserError(f"select_metric {metric!r} is not a metric of the {task.NAME} task; use one of "
                    f"{', '.join(sorted(task.SELECT))} (default {task.DEFAULT_SELECT})")
  return task.SELECT[metric]


def require_classification(cfg, command, workdir):
  """For the commands that can only mean classification (explanations of a class score, robustness accuracy,
  compression measured by accuracy): a clear error for a run of another task."""
  if cfg.task != classification.NAME:
    raise UserError(f"`imgrec {command}` works on classification runs; {workdir} is a {cfg.task} run "
                    f"(config.task={cfg.task!r})")
