"""Configs: the schema with its defaults, loading `file.py[:args]`, dotted overrides.

A config file defines `get_config(arg: str | None) -> ConfigDict` and changes only what
it needs on top of `defaults()`. Every key a file or an override sets must exist in the
schema, so a typo is an error naming the key instead of a silently ignored setting.
"""
import ast
import importlib.util
import os
import re
import sys

import ml_collections

from imgrec import files, tasks
from imgrec.errors import UserError


def defaults():
  """The full schema: the shared keys below, then every task's own (its settings(), imgrec/tasks/NAME/settings.py).
  Its values are the default run: a small CNN on `digits`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"  # what is recognised: a task of imgrec/tasks (classification | detection | ...)
  c.data = _data()
  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"
  c.model.kwargs = ml_collections.ConfigDict()  # passed to the model constructor
  c.model.dtype = "float32"   # compute dtype: float32 | bfloat16; params stay float32

  c.batch_size = 64           # global batch, split over all devices of all processes
  c.epochs = 20.0             # training length; `steps` wins when > 0
  c.steps = 0
  c.optim = _optim()
  c.select_metric = ""  # val metric that picks the best checkpoint: one of the task's SELECT ("": its default)
  c.early_stop_patience = 0     # > 0: stop after this many evaluations without a better val metric

  c.transfer = ml_collections.ConfigDict()  # fine-tuning (imgrec/transfer.py)
  c.transfer.init_from = ""   # workdir, params .npz, `imgrec import` folder, or a checkpoint itself (.npz[:img],
                              # .safetensors, timm/HF folder, .pth): params loaded by name (imgrec/transfer.py)
  c.transfer.reinit = "(^|/)head/"  # regex over "params/..." names kept freshly initialised (the new head)
  c.transfer.prefix = ""      # where init_from's model sits in this one: "backbone/" loads a classifier into a detector
  c.transfer.lr_mults = ()    # ((regex, multiplier), ...): first match scales that parameter's updates

  c.eval_every = 0            # steps between evaluations (0: once per epoch)
  c.log_every = 50            # steps between training-metric records
  c.checkpoint_every = 0      # steps between checkpoints (0: once per epoch); always at the end
  c.keep_checkpoints = 3

  c.profile = ""              # "START:STOP": jax.profiler trace of train steps [START, STOP) into WORKDIR/profile/
  c.compile_cache = ""        # persistent compilation cache dir ("": $IMGREC_COMPILE_CACHE or ~/.cache/imgrec/jax; "off")

  c.parallel = ml_collections.ConfigDict()
  c.parallel.coordinator_address = ""  # host:port; set (with the two below) for multi-host
  c.parallel.num_processes = 0
  c.parallel.process_id = -1
  c.parallel.fsdp = False           # shard params, optimiser state and EMA over the devices (FSDP), not replicate
  c.parallel.fsdp_min_size = 4096   # FSDP: arrays with fewer elements stay replicated (not worth a gather)
  for task in tasks.TASKS.values():
    _add(c, task.settings(), task.NAME)
  return c


def _add(c, block, owner):
  """Adds a task's {section: {key: default}} to the schema; a key two tasks declare is a programming error."""
  for section, keys in block.items():
    if section not in c:
      c[section] = ml_collections.ConfigDict()
    for key, value in keys.items():
      assert key not in c[section], f"config key {section}.{key} of the {owner} task is declared twice"
      c[section][key] = value


def _data():
  """The `data` section: where examples come from and how they are decoded and normalised."""
  d = ml_collections.ConfigDict()
  d.source = "digits"    # the task's sources; classification: digits | fashion_mnist | mnist | idx:DIR | folder:DIR |
  #                        tfds:NAME; detection: digit_boxes | coco:DIR | coco:ANN.json@IMAGES (imgrec/tasks/*/data.py)
  d.dir = ""             # overrides the directory of fashion_mnist / mnist; tfds: its data_dir
  d.image_size = 0       # resize to this square size (0: keep the source's size); photos: the crop size
  d.test_fraction = 0.2  # for sources without a test split (digits, flat folders)
  d.train_split = "train"
  d.eval_split = "test"
  # Host preprocessing at decode time for folder: and tfds: (imgrec/data/preprocess.py), e.g.
  # "decode|random_resized_crop(224)|flip" / "decode|resize_small(256)|central_crop(224)".
  # "": the source's default (that ImageNet recipe for photos; decode, or resize(image_size), for small
  # fixed-size sets). digits and IDX are arrays in memory: they take data.image_size only.
  d.pp_train = ""
  d.pp_eval = ""         # also what `imgrec serve` applies to uploaded images (saved in dataset.json)
  d.channels = 0         # folder:/tfds: 1 or 3; 0: from a sample of the images (all grayscale: 1)
  d.on_bad_image = "error"  # error | skip: an unreadable image stops the run naming it, or is skipped and counted
  d.workers = -1         # processes decoding folder:/tfds: images (-1: one per core, up to 16; 0: none)
  d.prefetch = 2         # batches prepared ahead (per worker, and on the background thread)
  d.norm = ""            # "imagenet": torchvision's ImageNet mean/std (imported torchvision weights need it)
  d.mean = ()            # per-channel mean of [0, 1] pixels, with data.std; (): estimated on the train split
  d.std = ()
  d.stats_examples = 2000  # images of a folder:/tfds: train split (decoded in the workers) for that estimate
  d.augment = ""         # on-device augmentation, e.g. "crop(pad=4)|flip|mixup(0.2)" (imgrec/data/augment.py)
  d.val_fraction = 0.0   # > 0: hold out this stratified fraction of train as "val" for model selection
  return d


def _optim():
  """The `optim` section: the optimiser, its schedule, regularisation, EMA, accumulation and pruning."""
  d = ml_collections.ConfigDict()
  d.name = "adamw"      # any optax optimiser by name: sgd, adam, adamw, lamb, lion, ...
  d.kwargs = ml_collections.ConfigDict()  # extra arguments of that optimiser (b1, eps, ...)
  d.lr = 3e-3
  d.momentum = 0.9      # sgd only
  d.nesterov = False    # sgd only
  d.weight_decay = 1e-4  # decoupled where the optimiser takes weight_decay, else added to the gradient
  d.no_decay = r"(bias|scale)$"  # regex on param paths ("stage1/conv1/kernel") never decayed
  d.l2 = 0.0             # L2 penalty (l2/2 * sum p^2) in the loss, same mask as weight decay
  d.l1 = 0.0             # L1 penalty (l1 * sum |p|) in the loss, same mask
  d.freeze = ""          # regex on param paths that are not trained
  d.schedule = "cosine"  # cosine | constant | linear | step | onecycle
  d.warmup_epochs = 1.0
  d.warmup_steps = 0     # wins over warmup_epochs when > 0
  d.decay_epochs = (30.0, 60.0, 80.0)  # step schedule: epochs where lr is multiplied by decay_factor
  d.decay_factor = 0.1
  d.grad_clip = 0.0      # global-norm clip (0: off)
  d.label_smoothing = 0.0
  d.ema_decay = 0.0      # > 0: keep an EMA of the params; evaluation and export use it
  d.accum_steps = 1      # gradient accumulation: micro-batches per optimiser step
  d.prune_sparsity = 0.0  # > 0: gradual global magnitude pruning of the kernels to this sparsity
  d.prune_every = 10      # steps between re-computations of the pruning masks
  return d


# Sections whose keys are checked by their consumer (the model constructor, the optimiser).
FREE_KEYS = ("model.kwargs", "optim.kwargs")


def _check_keys(cfg, schema, prefix=""):
  for key in cfg.keys():
    path = prefix + key
    if key not in schema:
      raise UserError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(schema.keys()))}")
    if (isinstance(schema[key], ml_collections.ConfigDict) and path not in FREE_KEYS
        and isinstance(cfg[key], ml_collections.ConfigDict)):
      _check_keys(cfg[key], schema[key], path + ".")


def load(spec=None):
  """Loads `path/to/file.py[:arg]` (or the defaults when `spec` is None) and validates it."""
  if not spec:
    cfg = defaults()
  else:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
      raise UserError(f"config file {path!r} not found; pass --config configs/NAME.py[:ARGS]")
    module_spec = importlib.util.spec_from_file_location("imgrec_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    # Config files share helpers through `configs.common`: the folder holding configs/ must be importable.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
      sys.path.insert(0, root)
    try:
      module_spec.loader.exec_module(module)
    except UserError:
      raise
    except Exception as e:
      raise UserError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
      raise UserError(f"config file {path!r} has no get_config(arg) function")
    try:
      cfg = module.get_config(arg or None)
    except UserError:
      raise
    except Exception as e:  # the file's own code failed on its argument: the user's file, the user's mistake
      raise UserError(f"config file {path!r} failed on argument {arg!r}: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
      raise UserError(f"config file {path!r}: get_config returned a {type(cfg).__name__}, not a ConfigDict")
  _check_keys(cfg, defaults())
  return cfg


def parse_value(text, old):
  """Parses an override's text into the type of the value it replaces."""
  if isinstance(old, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError("expected true or false")
  if isinstance(old, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"expected a {type(old).__name__}") from None
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  if old is not None and type(value) is not type(old) and not (
      isinstance(old, (tuple, list)) and isinstance(value, (tuple, list))):
    raise ValueError(f"expected a {type(old).__name__}")
  return value


def override(cfg, assignments):
  """Applies `key.sub=value` strings (from `--config.key.sub=value`) to `cfg` in place."""
  for item in assignments:
    key, eq, text = item.partition("=")
    if not eq:
      raise UserError(f"override {item!r} needs the form --config.KEY=VALUE")
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
      if part not in node:
        raise UserError(f"unknown config key {'.'.join(parts[:i + 1])!r} in override {item!r}")
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):  # `seed.x`: seed is a value, not a section
        raise UserError(f"config key {'.'.join(parts[:i + 1])!r} is a value, not a section: override it as "
                        f"--config.{'.'.join(parts[:i + 1])}=VALUE")
    last = parts[-1]
    free = ".".join(parts[:-1]) in FREE_KEYS
    if last not in node and not free:
      raise UserError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(node.keys()))}")
    try:
      if last in node:
        value = parse_value(text, node[last])
      else:
        try:
          value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
          value = text
    except (ValueError, SyntaxError) as e:
      raise UserError(f"bad value {text!r} for config key {key!r}: {e}") from None
    with node.ignore_type():
      node[last] = value
  return cfg


def validate(cfg):
  """Checks values that would otherwise fail deep inside training, or be silently taken to mean something
  else. The one place a config's values are checked: `imgrec train` and every trial of `imgrec sweep` call it
  before anything is written. Resolves select_metric "" to the task's default (the saved config names it)."""
  if cfg.batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {cfg.batch_size}")
  if cfg.steps < 0 or cfg.epochs < 0 or (cfg.steps == 0 and cfg.epochs == 0):
    raise UserError(f"set epochs > 0 or steps > 0 (got epochs={cfg.epochs}, steps={cfg.steps})")
  _at_least(cfg, "log_every", 1, "steps between training-metric records")
  _at_least(cfg, "keep_checkpoints", 1, "checkpoints kept; 0 would keep none, and the run could not resume")
  _at_least(cfg, "eval_every", 0, "steps between evaluations; 0: once per epoch")
  _at_least(cfg, "checkpoint_every", 0, "steps between checkpoints; 0: once per epoch")
  _at_least(cfg, "early_stop_patience", 0, "evaluations without improvement; 0: off")
  _at_least(cfg.optim, "prune_every", 1, "steps between pruning-mask updates", "optim.")
  if not 0 <= cfg.optim.prune_sparsity < 1:
    raise UserError(f"optim.prune_sparsity must be in [0, 1), got {cfg.optim.prune_sparsity}")
  for key, pattern in (("optim.no_decay", cfg.optim.no_decay), ("optim.freeze", cfg.optim.freeze),
                       ("transfer.reinit", cfg.transfer.reinit),
                       *((f"transfer.lr_mults[{i}]", m[0] if isinstance(m, (tuple, list)) and len(m) == 2 else None)
                         for i, m in enumerate(cfg.transfer.lr_mults))):
    _check_regex(key, pattern)
  if cfg.optim.lr <= 0:
    raise UserError(f"optim.lr must be positive, got {cfg.optim.lr}")
  if cfg.optim.accum_steps < 1 or cfg.batch_size % cfg.optim.accum_steps:
    raise UserError(f"batch_size {cfg.batch_size} must be a multiple of optim.accum_steps {cfg.optim.accum_steps}")
  if not 0 <= cfg.data.val_fraction < 1:
    raise UserError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
  if not 0 < cfg.data.test_fraction < 1:
    raise UserError(f"data.test_fraction must be in (0, 1), got {cfg.data.test_fraction}")
  task = tasks.get(cfg.task)
  cfg.select_metric = cfg.select_metric or task.DEFAULT_SELECT  # "" is the task's default; saved resolved
  tasks.select_direction(task, cfg.select_metric)
  _validate_data(cfg.data, task)
  refuse_other_tasks_keys(cfg, task)
  task.validate(cfg)
  if cfg.model.dtype == "float16":  # float16 training needs dynamic loss scaling, which imgrec does not do
    raise UserError("model.dtype 'float16' is refused for training: without loss scaling, small gradients "
                    "underflow to zero in float16; use --config.model.dtype=bfloat16 (float32's exponent range, no "
                    "scaling needed, fast on TPUs and recent GPUs)")
  if cfg.model.dtype not in ("float32", "bfloat16"):
    raise UserError(f"model.dtype must be float32 or bfloat16, got {cfg.model.dtype!r}")
  return cfg


def _at_least(node, key, low, meaning, prefix=""):
  value = node[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise UserError(f"{prefix}{key} must be an integer >= {low} ({meaning}), got {value!r}")


def _check_regex(key, pattern):
  if not isinstance(pattern, str):
    raise UserError(f"{key} must be a (regex, multiplier) pair, e.g. ((\"^params/head/\", 10.0),), got {pattern!r}")
  try:
    re.compile(pattern)
  except re.error as e:
    raise UserError(f"{key} {pattern!r} is not a valid regular expression: {e}; e.g. \"(bias|scale)$\" "
                    "matches parameter paths ending in bias or scale") from None


def _validate_data(d, task):
  encoded = d.source.startswith(task.DECODED_SOURCES)
  decoders = ", ".join(task.DECODED_SOURCES)
  _at_least(d, "image_size", 0, "the square size images are resized to; 0: the source's own", "data.")
  if (d.pp_train or d.pp_eval) and not encoded:
    raise UserError(f"data.pp_train / data.pp_eval preprocess encoded images ({decoders}); "
                    f"{d.source!r} is held in memory as arrays: use data.image_size, and data.augment on device")
  if (d.pp_train or d.pp_eval) and d.image_size:
    raise UserError("set data.image_size or data.pp_train / data.pp_eval, not both: the op strings give the size, "
                    "e.g. decode|resize_small(146)|central_crop(128)")
  if d.channels not in (0, 1, 3):
    raise UserError(f"data.channels must be 0 (from the images), 1 or 3, got {d.channels}")
  if d.on_bad_image not in ("error", "skip"):
    raise UserError(f"data.on_bad_image must be error or skip, got {d.on_bad_image!r}")
  if d.workers < -1:
    raise UserError(f"data.workers must be -1 (one per core), 0 (decode in the main process) or more, got {d.workers}")
  if d.prefetch < 0:
    raise UserError(f"data.prefetch must be >= 0, got {d.prefetch}")
  if d.norm not in ("", "imagenet"):
    raise UserError(f"data.norm must be '' (data.mean/std, or estimated) or 'imagenet', got {d.norm!r}")
  if d.norm and (d.mean or d.std):
    raise UserError("set data.norm=imagenet or data.mean / data.std, not both")
  if bool(d.mean) != bool(d.std) or len(d.mean) != len(d.std) or any(s <= 0 for s in d.std):
    raise UserError(f"data.mean {tuple(d.mean)} and data.std {tuple(d.std)} need the same number of values, "
                    "std > 0")
  if d.stats_examples < 1:
    raise UserError(f"data.stats_examples must be positive, got {d.stats_examples}")
  schema = defaults().data
  ignored = [f"data.{k}={d[k]!r}" for k in ENCODED_ONLY if d[k] != schema[k]]
  if ignored and not encoded:
    them = "it" if len(ignored) == 1 else "them"
    raise UserError(f"{', '.join(ignored)} set, but only {decoders} sources decode images; {d.source!r} is held "
                    f"in memory as arrays and would ignore {them}: leave {them} at the default")


# Data keys that act on decoding (a task's DECODED_SOURCES) only; digits and IDX sets are arrays in memory.
ENCODED_ONLY = ("channels", "workers", "on_bad_image", "stats_examples")


def refuse_other_tasks_keys(cfg, task):
  """A key that only another task reads, set away from its default, would be silently ignored: refused."""
  schema, own = defaults(), task_keys(task)
  for other in tasks.TASKS.values():
    for key in task_keys(other) - own:
      section, name = key.split(".")
      if section in cfg and name in cfg[section] and cfg[section][name] != schema[section][name]:
        raise UserError(f"{key}={cfg[section][name]!r} is a setting of the {other.NAME} task, and this run's "
                        f"task is {task.NAME} (config.task), which would ignore it: leave it at its default "
                        f"({schema[section][name]!r}) or set --config.task={other.NAME}")


def task_keys(task):
  """The dotted keys a task declares (its settings())."""
  return {f"{section}.{key}" for section, keys in task.settings().items() for key in keys}


def save(cfg, path):
  """Writes `cfg` as JSON, atomically: a kill while it is written leaves the previous file."""
  files.write_atomic(path, cfg.to_json_best_effort(indent=2, sort_keys=True))


def load_saved(path):
  """Reads the `config.json` a training run wrote into its workdir."""
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: is this a workdir written by `imgrec train`?")
  saved = files.read_json(path)
  if not isinstance(saved, dict):
    raise UserError(f"{path} holds no config (a JSON {type(saved).__name__}, not an object); restore it from a copy "
                    "or train into a new --workdir")
  cfg = defaults()

  def merge(node, values):
    for k, v in values.items():
      if isinstance(v, dict) and k in node and isinstance(node[k], ml_collections.ConfigDict) and k != "kwargs":
        merge(node[k], v)
      else:
        with node.ignore_type():
          node[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else (
              tuple(v) if isinstance(v, list) else v)

  merge(cfg, saved)
  return cfg
