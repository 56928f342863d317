"""The module structure: imports run downward only.

Every `imgrec` module's imports are read with `ast`, those inside functions included, so that an import
hidden in a function body to dodge a cycle counts like any other. Nothing is imported or run.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "imgrec")


def module_name(path):
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel.removesuffix(".__init__")


def modules():
  """{module name: file path} for every .py file of the package."""
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        found[module_name(os.path.join(root, f))] = os.path.join(root, f)
  return found


def imported(path, known):
  """The imgrec modules a file imports, anywhere in it (`from imgrec import x` names module x when it is one)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  this = module_name(path)
  package = this if path.endswith("__init__.py") else this.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package, up level - 1
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:  # `import imgrec.models.layers` -> the deepest known module
        name = name.rpartition(".")[0]
      if name.startswith("imgrec") and name != this and name != "imgrec":
        out.add(name)
  return out


def graph():
  known = modules()
  return {name: imported(path, known) for name, path in known.items()}


def find_cycle(edges):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_reader_sees_imports_inside_functions(tmp_path):
  pkg = tmp_path / "imgrec"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("def f():\n  from imgrec import b\n  return b\n")
  (pkg / "b.py").write_text("import imgrec.a\n")
  known = {"imgrec": "", "imgrec.a": "", "imgrec.b": ""}
  assert imported(str(pkg / "a.py"), known) == {"imgrec.b"}
  assert imported(str(pkg / "b.py"), known) == {"imgrec.a"}
  assert find_cycle({"imgrec.a": {"imgrec.b"}, "imgrec.b": {"imgrec.a"}}) == ["imgrec.a", "imgrec.b", "imgrec.a"]
  assert find_cycle({"imgrec.a": {"imgrec.b"}, "imgrec.b": set()}) is None


def test_no_import_cycles():
  cycle = find_cycle(graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_trainer():
  importers = sorted(m for m, deps in graph().items() if "imgrec.train" in deps)
  assert importers == ["imgrec.cli"], f"imgrec.train is imported by {importers}; only imgrec.cli may"


def test_the_trainer_is_only_the_loop():
  """train.py holds `train()` and the helpers it calls; `train()` itself stays short (banner sections)."""
  with open(os.path.join(PACKAGE, "train.py")) as f:
    tree = ast.parse(f.read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
  assert fn.end_lineno - fn.lineno + 1 <= 80, f"train() is {fn.end_lineno - fn.lineno + 1} lines"


# What a task's examples, outputs and metrics are called (imgrec/tasks): the shared modules name none of them.
TASK_NAMES = {"label", "labels", "logits", "probabilities", "accuracy", "top5_accuracy", "ece", "boxes", "classes",
              "box_mask", "num_classes"}
# Every module is shared but these, each for its reason: the task packages own their names; the model zoo and the
# checkpoint importers build classifiers (a head of `num_classes`); the commands that only mean classification
# (they refuse other tasks' runs in one line: tasks.require_classification) and the classification data sources
# with their on-device augmentation (labels, mixup of one-hot targets). The serve package is checked below
# (its :classify route is TF-Serving's classification API).
NOT_SHARED = ("tasks/", "models/", "checkpoint_import/", "robustness.py", "explain.py", "compress/", "transfer.py",
              "data/sources.py", "data/splits.py", "data/augment.py", "serve/")


def shared_modules():
  for name, path in modules().items():
    rel = os.path.relpath(path, PACKAGE)
    if not rel.startswith(NOT_SHARED) and rel != "__init__.py":
      yield rel, path


def test_shared_modules_name_no_task_targets():
  shared = dict(shared_modules())
  assert {"train.py", "config.py", "workdir.py", "cli.py", "plots.py", "data/pipeline.py", "resume.py"} <= set(shared)
  for rel, path in shared.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    found = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in TASK_NAMES}
                   | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in TASK_NAMES})
    assert not found, f"imgrec/{rel} names {found}: what a task's examples or outputs hold belongs in imgrec/tasks"
