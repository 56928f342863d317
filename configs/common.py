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
    values[key] = parse_value(text, defaults[key]) if eq else True
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
