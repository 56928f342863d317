"""Model server: Open Inference Protocol v2 over HTTP and gRPC, TF-Serving REST, plain image upload, a web page.

  protocol.py      request parsing and validation (pure functions over bytes and dicts)
  batcher.py       bounded dynamic batcher over compiled padded batch sizes, one replica per device
  auth.py          API keys
  grpc_service.py  the OIP v2 gRPC service (KServe `inference.GRPCInferenceService`, kserve_v2.proto)
  app.py           the Starlette application, model loading, `serve()`
"""
