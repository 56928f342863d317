"""Model server: Open Inference Protocol v2 over HTTP and gRPC, TF-Serving REST, plain image upload, a web page.

  protocol.py      OIP v2 request parsing and validation, reply building, the tensor and image helpers (pure
                   functions over bytes and dicts)
  rest.py          the REST bodies beside it: TF-Serving's, uploads, Hugging Face's pipeline JSON
  batcher.py       bounded dynamic batcher over compiled padded batch sizes, one replica per device
  auth.py          API keys
  served.py        one served model version (ServedModel: restore, compile, infer) and the adapters that read a
                   task's description of its inputs and outputs
  gate.py          the ASGI middleware in front of every route (access log, metrics, API key, body cap)
  routes.py        the HTTP handlers and route table, and the routes a task adds (`routes()` in its module)
  grpc_service.py  the OIP v2 gRPC service (KServe `inference.GRPCInferenceService`, kserve_v2.proto)
  page.py          the web page at `/`
  app.py           `create_app` (the Starlette app around the routes), `serve()`
"""
