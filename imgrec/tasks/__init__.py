"""Tasks: what differs between recognition tasks. `config.task` names one; `get(name)` returns its module.

Everything else is shared and names no task's targets: the trainer and its safety machinery (resume guard,
signals, finite checks, checkpoints, exact data order), the input pipeline, `steps` (the step's skeleton:
accumulation, EMA, the optimiser; `stream`, the one evaluation loop), the server's batcher and `export`.
A task module gives, as plain functions and constants (no base class):

Data
  open_data(data_cfg) -> Dataset        its sources by name (classification: digits, idx:, folder:, tfds:...)
  A split: len(split); split.spec: {feature: (shape, numpy dtype)}, "image" uint8 (H, W, C) among them;
  split.example(i, train, rng) -> {feature: array of that shape}, targets padded to static shapes (detection:
  "boxes" float32 [data.max_boxes, 4] x0,y0,x1,y1 in the preprocessed image's pixels, "classes" int32
  [data.max_boxes], "box_mask" bool [data.max_boxes]), or None for an unreadable image under
  data.on_bad_image=skip. The pipeline stacks the features of a batch and adds "mask" to eval batches; it names
  no feature but "image".
Model
  create_model(cfg, info) -> a Linen module; apply(variables, float NHWC, train) -> outputs (any pytree).
  Backbones come from the zoo (imgrec.models); a head that needs intermediate features asks the backbone for them.
Training (pure, inside the jitted step)
  make_inputs(cfg, info) -> fn(rng, batch) -> (float images in [0, 1] after augmentation, targets pytree)
  make_loss(cfg, info) -> fn(outputs, targets) -> (scalar loss, {train metric: scalar})
Evaluation
  make_eval_fn(model, mean, std) -> fn(variables, batch) -> per-example outputs (run by steps.stream)
  evaluate(outputs, split, info) -> (record: what metrics.jsonl keeps, summary: everything the report shows)
  SELECT: {metric: "max" | "min"}, the metrics model selection may use; DEFAULT_SELECT
Prediction and serving
  make_predict(model, mean, std) -> fn(variables, uint8 images) -> {output name: array [B, ...]}, decoding
  included (inside jit, static shapes); OUTPUTS: [(name, datatype, per-example shape)] for model metadata
Reports
  write_report(out_dir, outputs, split, info, summary): report.md, metrics.json and PNG plots
"""
