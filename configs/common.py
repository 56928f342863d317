"""Helpers shared by config files."""


def parse_arg(arg, **defaults):
  """Parses a config argument "key=value,key2=value2" against typed defaults.

  `configs/fashion_mnist_cnn.py:quick=True` -> parse_arg("quick=True", quick=False).quick == True
  """
  import types
  from imgrec.config import parse_value
  from imgrec.errors import UserError
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, text = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
    try:
      values[key] = parse_value(text, defaults[key]) if eq else True
    except ValueError as e:
      raise UserError(f"bad value {text!r} for config argument {key!r}: {e}") from None
  return types.SimpleNamespace(**values)


def fashion_mnist_zoo(arg, model, kwargs, quick_kwargs, epochs=10.0, lr=3e-3, batch_size=128, **optim):
  """A zoo model on Fashion-MNIST (28x28x1). Config arguments:

    model=NAME   another model of the same family (kwargs must fit it)
    quick=True   the small-width variant (`quick_kwargs`), 300 steps: the `scripts/bench_zoo.py` budget
    steps=N      train for N steps instead of `epochs`
  """
  from imgrec.config import defaults
  a = parse_arg(arg, model=model, quick=False, steps=0)
  c = defaults()
  c.data.source = "fashion_mnist"
  c.model.name = a.model
  c.model.kwargs.update(dict(quick_kwargs if a.quick else kwargs))
  c.batch_size = batch_size
  c.epochs = epochs
  c.steps = a.steps or (300 if a.quick else 0)
  c.optim.lr = lr
  c.optim.warmup_epochs = 0.02 if a.quick else 0.5  # quick: ~10% of 300 steps at batch 64 warms up
  c.optim.update(optim)
  c.log_every = 50
  c.eval_every = c.checkpoint_every = c.steps if a.quick else 0
  return c


def imagenet(arg, model, kwargs, tiny_kwargs, batch_size, epochs, pp_train_crop="random_resized_crop({size})"):
  """The data, batch and length part of an ImageNet recipe. Config arguments:

    source=folder:DIR   an ImageNet folder (DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG; eval on val),
                        or tfds:imagenet2012 (the default; eval on validation)
    size=224            the crop; eval resizes the short side to size / 0.875 first (256 for 224)
    batch=N, steps=N    another global batch (ResNet-50 scales its learning rate with it) or a fixed length
    tiny=True           a CPU smoke variant: `tiny_kwargs` (a narrow, shallow model), 32 px, batch 16, 20 steps
  """
  from imgrec.config import defaults
  a = parse_arg(arg, source="tfds:imagenet2012", size=224, batch=batch_size, steps=0, tiny=False)
  size = 32 if a.tiny and a.size == 224 else a.size
  c = defaults()
  c.data.source = a.source
  c.data.eval_split = "validation" if a.source.startswith("tfds:") else "val"
  c.data.pp_train = f"decode|{pp_train_crop.format(size=size)}|flip"
  c.data.pp_eval = f"decode|resize_small({int(round(size / 0.875))})|central_crop({size})"
  c.model.name = model
  c.model.kwargs.update(dict(tiny_kwargs if a.tiny else kwargs))
  c.model.dtype = "float32" if a.tiny else "bfloat16"
  c.batch_size = 16 if a.tiny and a.batch == batch_size else a.batch
  c.epochs = epochs
  c.steps = a.steps or (20 if a.tiny else 0)
  c.log_every = 10 if a.tiny else 100
  c.eval_every = c.checkpoint_every = c.steps if a.tiny else 0
  return c


def finetune(arg, model_family, size, steps, lr, batch, optim_name="sgd"):
  """The part shared by the fine-tuning recipes (configs/finetune_*.py): data, the model the checkpoint is
  (`checkpoint_import.describe`), transfer from it, a cosine schedule with 10% warm-up. Config arguments:

    init=PATH          the pretrained checkpoint, or an `imgrec import` folder (required)
    source=tfds:cifar10 | folder:DIR, size=N (train crop and eval resize), steps=N, lr=X, batch=N
  """
  from imgrec import checkpoint_import
  from imgrec.config import defaults
  from imgrec.errors import UserError
  a = parse_arg(arg, init="", source="tfds:cifar10", size=size, steps=steps, lr=lr, batch=batch)
  if not a.init:
    raise UserError("give the pretrained checkpoint: configs/finetune_....py:init=PATH (a checkpoint or an "
                    "`imgrec import` folder)")
  info = checkpoint_import.describe(a.init)
  if not info["model"]["name"].startswith(model_family):
    raise UserError(f"{a.init} is a {info['model']['name']} checkpoint; this recipe is for {model_family}")
  c = defaults()
  c.data.source = a.source
  c.data.eval_split = "test" if a.source.startswith("tfds:") else c.data.eval_split
  c.data.pp_train = f"decode|random_resized_crop({a.size}, scale=(0.5, 1.0))|flip"
  c.data.pp_eval = f"decode|resize({a.size})"
  c.model.name = info["model"]["name"]
  c.model.kwargs.update(info["model"]["kwargs"])
  c.model.dtype = "bfloat16"
  c.transfer.init_from = a.init
  c.batch_size = a.batch
  c.steps = a.steps
  c.optim.name = optim_name
  c.optim.lr = a.lr
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = max(1, a.steps // 10)
  c.optim.grad_clip = 1.0
  c.optim.weight_decay = 0.0
  c.log_every = 50
  c.eval_every = c.checkpoint_every = a.steps
  return c
