"""A model repository: many models and versions that are loaded, reloaded, unloaded and evicted while serving.

  DIR/NAME/model.json      optional settings: {"version_policy": {"latest": 2} | "all" | {"specific": [1, 3]},
                           "labels": {"stable": 3, "canary": 4}, "batch_sizes": [1, 8]}
  DIR/NAME/VERSION/        VERSION a positive integer: a training run, an `imgrec import` folder, or a folder
                           holding one `imgrec export` artifact (*.zip)

`Repository` keeps every model's versions with a state (READY, UNAVAILABLE, LOADING, UNLOADING) and a reason,
and changes them while requests are served:
  - loads of one model are serialised (a lock per model); other models keep serving meanwhile;
  - a reload builds the new version beside the old and swaps it in under the table lock: requests that already
    hold the old one finish on it, new ones get the new; the old one is closed once its last request is done;
  - an unload drains the same way, then closes the version (its batchers, parameters and compiled programs are
    dropped with it);
  - with a memory budget, a request for a model that is not loaded loads it, and the least recently used idle
    versions of other models are evicted to make room (the index says so).
A request holds a `Lease` from `acquire` to `release`; that count is what "drained" means.

The loader (app.py's) is `loader(name, version, path, settings, stats) -> served` where `served` has `close()`
and `nbytes`; this module knows nothing of models (only memory_total asks JAX about the device), so its rules
are tested with a fake loader.
"""
import dataclasses
import logging
import os
import re
import threading
import time

import jax

from imgrec import files
from imgrec.errors import UserError
from imgrec.serve.protocol import RequestError

log = logging.getLogger("imgrec")

SETTINGS_FILE = "model.json"
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
MODES = ("none", "explicit", "poll")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
RUN, IMPORT, EXPORT = "run", "import", "export"


def check_name(name):
  """A model name must be a plain folder name: `..`, `/`, `%2F` or an absolute path is refused before any file
  is touched."""
  if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
    raise RequestError(400, f"model name {name!r} is not a plain name (letters, digits, '_', '-', '.'; no '..' or "
                            "'/')")
  return name


# ---------------------------------------------------------------------------- on disk (pure functions)

@dataclasses.dataclass(frozen=True)
class Settings:
  policy: tuple = ("latest", 1)   # ("latest", n) | ("all",) | ("specific", (v, ...))
  labels: tuple = ()              # ((label, version), ...)
  batch_sizes: tuple = ()         # (): the server's --batch-sizes


def parse_settings(raw, where):
  """A model.json's value -> Settings; a UserError naming `where` and the bad key."""
  if not isinstance(raw, dict):
    raise UserError(f"{where}: must be a JSON object")
  unknown = sorted(set(raw) - {"version_policy", "labels", "batch_sizes"})
  if unknown:
    raise UserError(f"{where}: unknown keys {unknown}; known: version_policy, labels, batch_sizes")
  policy = raw.get("version_policy", {"latest": 1})
  if policy == "all" or policy == {"all": {}}:
    policy = ("all",)
  elif isinstance(policy, dict) and set(policy) == {"latest"} and _positive(policy["latest"]):
    policy = ("latest", policy["latest"])
  elif isinstance(policy, dict) and set(policy) == {"specific"} and isinstance(policy["specific"], list) and \
      policy["specific"] and all(_positive(v) for v in policy["specific"]):
    policy = ("specific", tuple(sorted(set(policy["specific"]))))
  else:
    raise UserError(f"{where}: version_policy {policy!r} must be {{\"latest\": N}}, \"all\" or "
                    "{\"specific\": [V, ...]} with positive integers")
  labels = raw.get("labels", {})
  if not isinstance(labels, dict) or not all(isinstance(k, str) and NAME_RE.fullmatch(k) and not k.isdigit() and
                                             _positive(v) for k, v in labels.items()):
    raise UserError(f"{where}: labels must map plain names (not numbers) to positive versions, e.g. "
                    "{\"stable\": 3}")
  sizes = raw.get("batch_sizes", [])
  if not isinstance(sizes, list) or not all(_positive(s) for s in sizes):
    raise UserError(f"{where}: batch_sizes must be a list of positive integers, e.g. [1, 8, 32]")
  return Settings(policy, tuple(sorted(labels.items())), tuple(sorted(set(sizes))))


def _positive(v):
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def read_settings(model_dir):
  path = os.path.join(model_dir, SETTINGS_FILE)
  return parse_settings(files.read_json(path), path) if os.path.isfile(path) else Settings()


def version_kind(path):
  """(kind, the path the loader takes) of a version folder: a run, an import folder, or an export artifact in it;
  a UserError saying what the folder lacks."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return RUN, path
  if os.path.isfile(os.path.join(path, "import.json")) and os.path.isfile(os.path.join(path, "params.npz")):
    return IMPORT, path
  zips = sorted(f for f in os.listdir(path) if f.endswith(".zip"))
  if len(zips) == 1:
    return EXPORT, os.path.join(path, zips[0])
  if len(zips) > 1:
    raise UserError(f"{path} holds {len(zips)} .zip files; a version holds one `imgrec export` artifact")
  raise UserError(f"{path} holds no run (config.json), `imgrec import` folder (import.json + params.npz) or "
                  "`imgrec export` artifact (*.zip)")


def fingerprint(path):
  """What changes when a version on disk changes: (relative name, size, mtime) of every file under it."""
  found = []
  for root, dirs, names in os.walk(path):
    dirs.sort()
    for n in sorted(names):
      p = os.path.join(root, n)
      try:
        st = os.stat(p)
      except OSError:
        continue
      found.append((os.path.relpath(p, path), st.st_size, st.st_mtime_ns))
  return tuple(found)


def scan_model(model_dir):
  """(versions {int: path}, problems {folder name: reason}) of one model folder."""
  versions, problems = {}, {}
  for entry in sorted(os.listdir(model_dir)):
    full = os.path.join(model_dir, entry)
    if not os.path.isdir(full):
      continue
    if entry.isdigit() and int(entry) > 0:
      versions[int(entry)] = full
    else:
      problems[entry] = "ignored: a version folder's name must be a positive integer (NAME/1/, NAME/2/, ...)"
  return versions, problems


def scan(root):
  """{name: model folder} of a repository; folders whose name is not a plain name are skipped (logged)."""
  if not os.path.isdir(root):
    raise UserError(f"--model-repository {root} is not a folder; give DIR holding DIR/NAME/VERSION/")
  found = {}
  for entry in sorted(os.listdir(root)):
    full = os.path.join(root, entry)
    if os.path.isdir(full) and not entry.startswith("."):
      if NAME_RE.fullmatch(entry) and ".." not in entry:
        found[entry] = full
      else:
        log.warning("model repository: %s is not a usable model name; skipped", full)
  return found


def select(versions, policy):
  """The versions a policy serves, of those on disk (ascending)."""
  have = sorted(versions)
  if policy[0] == "all":
    return have
  if policy[0] == "latest":
    return have[-policy[1]:]
  return [v for v in have if v in policy[1]]


def default_version(path):
  """The version of a `--workdir` given without one: its restored checkpoint's step (W/best first), 1 for an
  import folder."""
  for sub in ("best", "checkpoints"):
    d = os.path.join(path, sub)
    steps = [int(e) for e in os.listdir(d) if e.isdigit()] if os.path.isdir(d) else []
    if steps:
      return max(steps)
  return 1


# ---------------------------------------------------------------------------- statistics

class Stats:
  """Triton-style statistics of one model version (the HTTP JSON and the gRPC message share these fields).
  `observe` also feeds the per-model Prometheus series when given."""

  def __init__(self, observe=None):
    self.lock = threading.Lock()
    self.observe = observe
    self.inference_count = self.execution_count = 0
    self.last_inference = 0
    self.durations = {k: [0, 0] for k in ("success", "fail", "queue", "compute_infer")}  # [count, ns]

  def batch(self, n):
    with self.lock:
      self.execution_count += 1
    if self.observe:
      self.observe("batch", n)

  def request(self, ok, images, total_s, queue_s=None, compute_s=None):
    with self.lock:
      key = "success" if ok else "fail"
      self.durations[key][0] += 1
      self.durations[key][1] += int(total_s * 1e9)
      if ok:
        self.inference_count += images
        self.last_inference = int(time.time() * 1000)
        for k, s in (("queue", queue_s), ("compute_infer", compute_s)):
          if s is not None:
            self.durations[k][0] += 1
            self.durations[k][1] += int(s * 1e9)
    if self.observe:
      self.observe("request", (ok, images, total_s, queue_s, compute_s))

  def as_dict(self):
    with self.lock:
      return {"last_inference": self.last_inference, "inference_count": self.inference_count,
              "execution_count": self.execution_count,
              "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self.durations.items()}}


# ---------------------------------------------------------------------------- the repository

@dataclasses.dataclass(eq=False)
class Slot:
  """One loaded copy of a version and the requests holding it."""
  served: object
  nbytes: int
  inflight: int = 0


@dataclasses.dataclass(eq=False)
class Version:
  version: int
  path: str
  state: str = UNAVAILABLE
  reason: str = "not loaded"
  slot: Slot = None
  fingerprint: tuple = ()
  last_used: float = 0.0
  nbytes: int = 0          # of the last load (the estimate for the next one)
  stats: Stats = None


@dataclasses.dataclass(eq=False)
class Model:
  name: str
  folder: str | None       # None: given with --workdir (not scanned)
  settings: Settings = Settings()
  versions: dict = dataclasses.field(default_factory=dict)   # {int: Version}
  problems: dict = dataclasses.field(default_factory=dict)   # {folder name: reason}
  reason: str = ""         # what is wrong with the model folder as a whole
  on_disk: tuple = ()      # the version folders found by the last scan
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)  # serialises its loads


@dataclasses.dataclass(frozen=True)
class Lease:
  model: str
  version: int
  slot: Slot

  @property
  def served(self):
    return self.slot.served


class Repository:
  """Models from `--model-repository` (scanned) and `--workdir` (fixed), and their loaded versions.

  `loader(name, version, path, settings, stats) -> served` (served.close(), served.nbytes). `budget`: bytes that
  loaded versions may hold (None: no limit); with it, a request for a model that is not loaded loads it.
  `observe(model, version) -> fn(kind, value)`: per-model metrics (optional); `on_evict(model, version)`: called
  after each eviction."""

  def __init__(self, loader, root=None, mode="none", budget=None, drain_timeout=60.0, observe=None, on_evict=None):
    if mode not in MODES:
      raise UserError(f"--model-control-mode {mode!r}: use one of {', '.join(MODES)}")
    self.loader, self.root, self.mode, self.budget = loader, root, mode, budget
    self.drain_timeout, self.observe, self.on_evict = drain_timeout, observe, on_evict
    self.models = {}
    self.cond = threading.Condition()  # guards every table below; notified when a request releases a slot
    self.evictions = 0
    if root is not None:
      self.refresh()

  # ---------------------------------------------------------------- the tables (under self.cond)

  def add_workdir(self, name, version, path):
    """A `--workdir` model: fixed, never rescanned; its version defaults to the checkpoint's step."""
    check_name(name)
    with self.cond:
      m = self.models.setdefault(name, Model(name, None))
      v = version or default_version(path)
      if v in m.versions:
        raise UserError(f"model {name!r} version {v} is given twice")
      m.versions[v] = self._version(name, v, path)

  def _version(self, name, v, path):
    observe = self.observe(name, v) if self.observe else None
    return Version(v, path, stats=Stats(observe))

  def refresh(self):
    """Re-reads the repository folder: models and versions added or removed on disk (nothing is loaded or
    unloaded here). -> names of the models whose folder disappeared."""
    found = scan(self.root)
    with self.cond:
      gone = [n for n, m in self.models.items() if m.folder is not None and n not in found]
      for name, folder in found.items():
        m = self.models.setdefault(name, Model(name, folder))
        self._rescan(m)
    return gone

  def _rescan(self, m):
    try:
      m.settings, m.reason = read_settings(m.folder), ""
    except UserError as e:
      m.settings, m.reason = Settings(), str(e)
    try:
      versions, m.problems = scan_model(m.folder)
    except OSError as e:
      versions, m.problems, m.reason = {}, {}, f"cannot read {m.folder}: {e}"
    m.on_disk = tuple(sorted(versions))
    for v, path in versions.items():
      if v not in m.versions:
        m.versions[v] = self._version(m.name, v, path)
    for v in [v for v in m.versions if v not in versions and m.versions[v].slot is None]:
      del m.versions[v]  # gone from disk and not loaded: forgotten (a loaded one is unloaded by `load`)
    if not versions and not m.reason:
      m.reason = f"{m.folder} has no version folders (NAME/1/, NAME/2/, ...)"

  def model(self, name):
    check_name(name)
    with self.cond:
      if name not in self.models:
        raise RequestError(404, f"model {name!r} not found; served: {sorted(self.models)}")
      return self.models[name]

  # ---------------------------------------------------------------- requests

  def acquire(self, name, version=None, on_demand=None):
    """A Lease on the version a request names: None/"" the highest READY one, a number, or a label. Raises
    404 (unknown, not loaded), 503 (loading). With `on_demand` (default: a budget is set) a version that is
    not loaded is loaded first: call it from a worker thread then (see `acquire_async` in app.py)."""
    on_demand = self.budget is not None if on_demand is None else on_demand
    m = self.model(name)
    for attempt in (0, 1):
      with self.cond:
        v = self._resolve(m, version)
        if v is not None and v.slot is not None:
          v.slot.inflight += 1
          v.last_used = time.monotonic()
          return Lease(name, v.version, v.slot)
      if attempt or not on_demand:
        break
      self.load(name, only=None if v is None else v.version)  # waits for a load already under way
    self._refuse(m, version)

  def _resolve(self, m, version):
    """The Version a request means (None when no such version is loaded and none is named)."""
    if version in (None, ""):
      ready = [v for v in m.versions.values() if v.slot is not None]
      if ready:
        return max(ready, key=lambda v: v.version)
      wanted = self._wanted(m)
      return m.versions[wanted[-1]] if wanted else None
    key = version
    if not str(version).isdigit():
      labels = dict(m.settings.labels)
      if version not in labels:
        raise RequestError(404, f"model {m.name!r} has no version label {version!r}; labels: {sorted(labels)}")
      key = labels[version]
    v = m.versions.get(int(key))
    if v is None:
      raise RequestError(404, f"model {m.name!r} has no version {version!r}; versions: {sorted(m.versions)}")
    return v

  def _refuse(self, m, version):
    with self.cond:
      states = {v.version: (v.state, v.reason) for v in m.versions.values()}
    if any(s == LOADING for s, _ in states.values()):
      raise RequestError(503, f"model {m.name!r} is loading", {"retry-after": "1"})
    what = f"model {m.name!r}" + (f" version {version!r}" if version else "")
    why = "; ".join(f"{v}: {s} ({r})" for v, (s, r) in sorted(states.items())) or m.reason or "no versions"
    raise RequestError(404, f"{what} is not loaded ({why}); load it with POST /v2/repository/models/{m.name}/load")

  def release(self, lease):
    with self.cond:
      lease.slot.inflight -= 1
      self.cond.notify_all()

  def ready(self):
    """[(name, version, served)] of every loaded version (metadata, the web page, readiness)."""
    with self.cond:
      return [(m.name, v.version, v.slot.served) for m in self.models.values() for v in m.versions.values()
              if v.slot is not None]

  # ---------------------------------------------------------------- loads and unloads

  def _wanted(self, m):
    if m.folder is None:
      return sorted(m.versions)
    return select({v: m.versions[v].path for v in m.on_disk}, m.settings.policy)

  def load(self, name, only=None):
    """Loads (or reloads, when changed on disk) the versions `name`'s policy serves and unloads the others;
    `only`: just that version. Serialised per model; other models serve meanwhile. -> the model's index
    entries. A version that fails keeps its old copy serving when it had one, else is UNAVAILABLE with the
    reason; the failure is raised as a RequestError(400) when nothing of the model is READY after."""
    m = self.model(name)
    with m.lock:
      if m.folder is not None:
        with self.cond:
          if not os.path.isdir(m.folder):
            raise RequestError(404, f"model {name!r} is no longer in the repository")
          self._rescan(m)
      with self.cond:
        wanted = [only] if only is not None else self._wanted(m)
        drop = [] if only is not None else [v for v, x in m.versions.items() if x.slot is not None and
                                           v not in wanted]
        if m.reason and m.folder is not None:  # a bad model.json: nothing loads under settings it did not mean
          for x in m.versions.values():
            x.reason = x.reason if x.slot is not None else m.reason
          raise RequestError(400, f"model {name!r}: {m.reason}")
      errors = [self._load_version(m, m.versions[v]) for v in wanted if v in m.versions]
      for v in drop:
        self._unload_version(m, m.versions[v], "unloaded: not in the version policy")
      with self.cond:
        gone = [v for v, x in m.versions.items() if x.slot is None and m.folder is not None and
                not os.path.isdir(x.path)]
        for v in gone:
          del m.versions[v]
        ready = any(x.slot is not None for x in m.versions.values())
      failed = [e for e in errors if e]
      if failed and not ready:
        raise RequestError(400, f"failed to load model {name!r}: {'; '.join(failed)}")
      return self.index_of(m)

  def _load_version(self, m, v):
    """Loads `v` unless its loaded copy is what is on disk; swaps it in. -> None, or the error message."""
    try:
      fp = fingerprint(v.path) if m.folder is not None else ()
    except OSError as e:
      fp = ()
      log.warning("model %s version %s: %s", m.name, v.version, e)
    if v.slot is not None and fp == v.fingerprint:
      return None
    with self.cond:
      if v.slot is None:
        v.state, v.reason = LOADING, "loading"
    try:
      kind, path = version_kind(v.path) if m.folder is not None else (RUN, v.path)
      self._make_room(m, v, v.nbytes)  # its size at its last load; a first load is measured after it
      t0 = time.monotonic()
      served = self.loader(m.name, v.version, path, m.settings, v.stats)
      log.info("model %s version %s (%s) loaded in %.1f s", m.name, v.version, kind, time.monotonic() - t0)
    except Exception as e:  # a bad version never stops the server: its reason is in the index
      reason = str(e) if isinstance(e, (UserError, RequestError)) else f"{type(e).__name__}: {e}"
      if not isinstance(e, (UserError, RequestError)):
        log.exception("model %s version %s failed to load", m.name, v.version)
      with self.cond:
        if v.slot is None:
          v.state, v.reason = UNAVAILABLE, f"load failed: {reason}"
        else:
          v.reason = f"reload failed, the loaded copy keeps serving: {reason}"
      return f"version {v.version}: {reason}"
    with self.cond:
      old, v.slot = v.slot, Slot(served, int(getattr(served, "nbytes", 0)))
      v.state, v.reason, v.fingerprint, v.nbytes = READY, "", fp, v.slot.nbytes
      v.last_used = time.monotonic()
    if old is not None:
      self._drain_and_close(m, v, old)
    self._make_room(m, v, 0)  # the real size may be more than the estimate
    return None

  def unload(self, name, reason="unloaded"):
    """Unloads every version of `name` (each drains first). -> the model's index entries."""
    m = self.model(name)
    with m.lock:
      for v in list(m.versions.values()):
        if v.slot is not None:
          self._unload_version(m, v, reason)
    return self.index_of(m)

  def _unload_version(self, m, v, reason):
    with self.cond:
      slot, v.slot = v.slot, None
      if slot is None:
        return
      v.state, v.reason = UNLOADING, reason
    self._drain_and_close(m, v, slot)
    with self.cond:
      if v.slot is None:
        v.state, v.reason = UNAVAILABLE, reason

  def _drain_and_close(self, m, v, slot):
    """Waits for the requests holding `slot` to finish, then closes it (frees its parameters and programs)."""
    with self.cond:
      drained = self.cond.wait_for(lambda: slot.inflight == 0, self.drain_timeout)
    if not drained:
      log.warning("model %s version %s: %d requests still running after %.0f s; closing anyway", m.name,
                  v.version, slot.inflight, self.drain_timeout)
    slot.served.close()
    slot.served = None

  # ---------------------------------------------------------------- memory budget

  def loaded_bytes(self):
    with self.cond:
      return sum(v.slot.nbytes for m in self.models.values() for v in m.versions.values() if v.slot is not None)

  def _make_room(self, m, v, needed):
    """Evicts idle versions of other models, least recently used first, until `needed` more bytes fit."""
    if self.budget is None:
      return
    while True:
      with self.cond:
        used = sum(x.slot.nbytes for mm in self.models.values() for x in mm.versions.values()
                   if x.slot is not None and x is not v)
        mine = v.slot.nbytes if v.slot is not None else needed
        if used + mine <= self.budget:
          return
        idle = [(x.last_used, mm, x) for mm in self.models.values() if mm is not m
                for x in mm.versions.values() if x.slot is not None and x.slot.inflight == 0]
        if not idle:
          if v.slot is None:
            raise UserError(f"memory budget of {self.budget} bytes is full: {used} bytes held by busy models, "
                            f"{mine} more needed")
          return
        _, victim_model, victim = min(idle, key=lambda t: t[0])
      if not victim_model.lock.acquire(timeout=1.0):  # it is loading itself: no eviction now
        log.warning("memory budget: %s is busy loading; %s version %s loads over the budget", victim_model.name,
                    m.name, v.version)
        return
      try:
        self._unload_version(victim_model, victim, f"evicted: memory budget {self.budget} bytes, least recently "
                             f"used while {m.name} version {v.version} loaded")
        with self.cond:
          self.evictions += 1
        if self.on_evict:
          self.on_evict(victim_model.name, victim.version)
      finally:
        victim_model.lock.release()

  # ---------------------------------------------------------------- index, poll

  def index_of(self, m):
    with self.cond:
      rows = [{"name": m.name, "version": str(v.version), "state": v.state, "reason": v.reason}
              for v in sorted(m.versions.values(), key=lambda v: v.version)]
      rows += [{"name": m.name, "version": f, "state": UNAVAILABLE, "reason": r} for f, r in sorted(m.problems.items())]
      if not rows:
        rows = [{"name": m.name, "state": UNAVAILABLE, "reason": m.reason or "no versions"}]
      return rows

  def index(self, ready_only=False):
    """Triton's repository index: every model and version with its state and reason."""
    if self.root is not None:
      self.refresh()
    with self.cond:
      models = sorted(self.models.values(), key=lambda m: m.name)
    rows = [r for m in models for r in self.index_of(m)]
    return [r for r in rows if r.get("state") == READY] if ready_only else rows

  def load_all(self, names=None):
    """Start-up: loads `names` (None: every model); failures stay in the index and never stop the server."""
    with self.cond:
      todo = sorted(self.models) if names is None else names
    for name in todo:
      try:
        self.load(name)
      except (RequestError, UserError) as e:
        log.warning("model %s: %s", name, getattr(e, "message", e))

  def poll(self):
    """poll mode: loads what was added or changed on disk, unloads what was removed."""
    gone = self.refresh()
    for name in gone:
      self.unload(name, "removed from the repository")
      with self.cond:
        self.models.pop(name, None)
    with self.cond:
      names = [n for n, m in self.models.items() if m.folder is not None]
    self.load_all(names)

  def close(self):
    with self.cond:
      names = list(self.models)
    for name in names:
      self.unload(name, "server stopping")


def memory_total():
  """What a fractional --memory-budget is a fraction of: the first device's memory on an accelerator, else RAM."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # not every backend reports memory
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_budget(text, total):
  """--memory-budget: bytes (`8000000000`, `8G`, `512M`) or a fraction of `total` (`0.5`)."""
  if text is None:
    return None
  t = str(text).strip().upper()
  units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  try:
    if t and t[-1] in units:
      value = float(t[:-1]) * units[t[-1]]
    else:
      value = float(t)
      if 0 < value <= 1:
        value *= total
  except ValueError:
    value = -1
  if value <= 0:
    raise UserError(f"--memory-budget {text!r}: give bytes (8000000000, 512M, 8G) or a fraction of memory (0.5)")
  return int(value)
