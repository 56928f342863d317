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
