"""HTTP model server: Open Inference Protocol v2, TF-Serving REST, plain image upload, a web page.

  protocol.py  request parsing and validation (pure functions over bytes and dicts)
  batcher.py   bounded dynamic batcher over a jitted predict function per padded batch size
  auth.py      API keys
  app.py       the Starlette application, model loading, `serve()`
"""
