"""API keys: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared in constant time."""
import hashlib
import hmac
import os

from imgrec.errors import UserError

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/"})  # probes and the static page
ADMIN_PREFIX = "/v2/repository/"  # model management: index, load, unload
ADMIN_METHODS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})


def load_keys(path):
  """One key per line; blank lines and `#` comments ignored."""
  if not os.path.isfile(path):
    raise UserError(f"API keys file {path} not found; write one key per line")
  with open(path) as f:
    keys = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
  if not keys:
    raise UserError(f"API keys file {path} has no keys; write one key per line")
  return keys


def digests(keys):
  # Comparing fixed-length digests keeps the key length out of the timing too.
  return tuple(hashlib.sha256(k.encode()).digest() for k in keys)


def presented_key(headers):
  """The key a request carries (headers: lower-case name -> value), or None."""
  auth = headers.get("authorization", "")
  if auth[:7].lower() == "bearer ":
    return auth[7:].strip()
  return headers.get("x-api-key")


def check(key, key_digests):
  """-> None when allowed, else (status, message). Every stored key is compared, with no early exit."""
  if key is None:
    return 401, "missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
  d = hashlib.sha256(key.encode()).digest()
  ok = False
  for ref in key_digests:
    ok |= hmac.compare_digest(d, ref)
  return None if ok else (403, "invalid API key")


def check_admin(key, key_digests, admin_digests, what="model management"):
  """Model management (load, unload, index) and a task's routes that change what every client gets (`what`
  names the request in the message): -> None when allowed, else (status, message). With API keys configured
  it needs an admin key (a separate file); an inference key is refused with 403. With no keys at all (a server
  on localhost) it is open, like every other route."""
  if not key_digests and not admin_digests:
    return None
  if not admin_digests:
    return 403, f"{what} needs an admin key: start the server with --admin-keys-file"
  refused = check(key, admin_digests)
  if refused and refused[0] == 403:
    return 403, f"{what} needs an admin key; this key is not one"
  return refused
