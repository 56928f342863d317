"""The OIP v2 gRPC service on a real server on 127.0.0.1 (HTTP beside it, same models and batchers), with
`tritonclient.grpc` as it is and with tritonclient's own protobuf messages for typed contents."""
import os

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from imgrec.serve import app as app_lib, grpc_service, protocol
from tests.test_serve import KEY, png, running_server

H = {"authorization": f"Bearer {KEY}"}
SERVE_DIR = os.path.dirname(grpc_service.__file__)


@pytest.fixture(scope="module")
def server(trained_workdir):
  options = app_lib.Options(batch_sizes=(1, 4, 16), max_delay_ms=2, max_queue=64, timeout_s=20,
                            limits=protocol.Limits(max_body_bytes=64 << 10, max_images=64), api_keys=(KEY,),
                            grpc_address="127.0.0.1:0")  # port 0: any free one, read back from app.state
  with running_server([("digits", None, trained_workdir), ("other", 7, trained_workdir)], options) as (url, gate):
    port = gate.app.state.grpc_port
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    yield url, client, port
    client.close()


def refused(fn):
  """-> (status code name, message) of the InferenceServerException `fn()` raises."""
  with pytest.raises(InferenceServerException) as e:
    fn()
  return e.value.status().removeprefix("StatusCode."), e.value.message()


def grpc_input(x, datatype):
  inp = tg.InferInput("images", list(x.shape), datatype)
  inp.set_data_from_numpy(x)  # tritonclient sends raw_input_contents
  return inp


def test_health_and_metadata(server):
  url, c, _ = server
  assert c.is_server_live() and c.is_server_ready()  # the probes are open, as over HTTP
  assert c.is_model_ready("digits", headers=H) and c.is_model_ready("other", "7", headers=H)
  assert list(c.get_server_metadata(headers=H).extensions) == [
      "binary_tensor_data", "classification", "model_repository", "statistics", "model_configuration"]
  meta = c.get_model_metadata("digits", headers=H)
  http_meta = requests.get(url + "/v2/models/digits", headers=H).json()
  assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("images", "UINT8", [-1, 8, 8, 1])]
  for kind in ("inputs", "outputs"):
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in getattr(meta, kind)] == \
        http_meta[kind]
  assert list(c.get_model_metadata("other", headers=H).versions) == ["7"]
  assert refused(lambda: c.get_model_metadata("nope", headers=H)) == (
      "NOT_FOUND", "model 'nope' not found; served: ['digits', 'other']")
  assert refused(lambda: c.is_model_ready("other", "99", headers=H))[0] == "NOT_FOUND"


def test_infer_raw_contents_same_top1_as_http(server, reference):
  url, c, _ = server
  images, top1, info = reference
  http = th.InferenceServerClient(url[len("http://"):])
  hin = th.InferInput("images", list(images.shape), "UINT8")
  hin.set_data_from_numpy(images, binary_data=True)
  http_logits = http.infer("digits", [hin], headers=dict(H)).as_numpy("logits")
  outputs = [tg.InferRequestedOutput("logits"), tg.InferRequestedOutput("probabilities", class_count=3)]
  r = c.infer("digits", [grpc_input(images, "UINT8")], outputs=outputs, headers=H, request_id="req-7")
  np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), http_logits.argmax(-1))
  np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), top1)
  np.testing.assert_allclose(r.as_numpy("logits"), http_logits, rtol=1e-5, atol=1e-5)
  response = r.get_response()
  assert (response.id, response.model_name, response.model_version) == ("req-7", "digits", "60")
  cls = r.as_numpy("probabilities")  # the classification extension: "score:index:label"
  assert cls.shape == (64, 3)
  assert [int(s.decode().split(":")[1]) for s in cls[:, 0]] == list(top1)
  normalised = ((images / 255.0 - np.array(info["mean"])) / np.array(info["std"])).astype(np.float32)
  r = c.infer("other", [grpc_input(normalised, "FP32")], model_version="7", headers=H)
  np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), top1)
  assert {o.name for o in r.get_response().outputs} == {"logits", "probabilities"}
  encoded = np.array([png(im) for im in images[:8]], dtype=object)
  r = c.infer("digits", [grpc_input(encoded, "BYTES")], headers=H)
  np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), top1[:8])


def test_typed_contents_with_tritonclient_messages(server, reference):
  """KServe clients may send typed `contents` instead of raw bytes; built here with tritonclient's own
  generated protobuf classes, so the wire format is checked against another implementation."""
  _, _, port = server
  images, top1, info = reference
  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def infer(datatype, shape, field, values, key=(("x-api-key", KEY),)):
      req = service_pb2.ModelInferRequest(model_name="digits", id="typed")
      t = req.inputs.add(name="images", datatype=datatype, shape=shape)
      getattr(t.contents, field).extend(values)
      req.outputs.add(name="logits")
      resp = stub.ModelInfer(req, metadata=key)
      return np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(-1, 10), resp

    logits, resp = infer("UINT8", [16, 8, 8, 1], "uint_contents", images[:16].ravel().tolist())
    np.testing.assert_array_equal(logits.argmax(-1), top1[:16])
    assert resp.id == "typed" and [o.name for o in resp.outputs] == ["logits"]
    assert list(resp.outputs[0].shape) == [16, 10] and resp.outputs[0].datatype == "FP32"
    normalised = ((images[:16] / 255.0 - np.array(info["mean"])) / np.array(info["std"])).astype(np.float32)
    logits, _ = infer("FP32", [16, 8, 8, 1], "fp32_contents", normalised.ravel().tolist())
    np.testing.assert_array_equal(logits.argmax(-1), top1[:16])
    logits, _ = infer("BYTES", [4], "bytes_contents", [png(im) for im in images[:4]])
    np.testing.assert_array_equal(logits.argmax(-1), top1[:4])
    for values, words in (([300] + [0] * 63, "within [0, 255]"), ([0] * 63, "63 values in contents.uint_contents")):
      with pytest.raises(grpc.RpcError) as e:
        infer("UINT8", [1, 8, 8, 1], "uint_contents", values)
      assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'images'" in e.value.details()
      assert words in e.value.details(), e.value.details()


def test_errors_map_to_status_codes_and_the_server_keeps_serving(server, reference):
  url, c, _ = server
  images = reference[0]
  good = grpc_input(images[:2], "UINT8")
  code, message = refused(lambda: c.infer("digits", [good]))
  assert code == "UNAUTHENTICATED" and "API key" in message
  assert refused(lambda: c.get_model_metadata("digits"))[0] == "UNAUTHENTICATED"
  assert refused(lambda: c.infer("digits", [good], headers={"authorization": "Bearer wrong"})) == (
      "PERMISSION_DENIED", "invalid API key")
  pixels = tg.InferInput("pixels", [1, 8, 8, 1], "UINT8")
  pixels.set_data_from_numpy(images[:1])
  cases = [  # (inputs, code, words in the message)
      ([grpc_input(np.zeros((2, 8, 8, 2), np.uint8), "UINT8")], "INVALID_ARGUMENT",
       "input 'images': shape [2, 8, 8, 2] does not match [-1, 8, 8, 1]"),
      ([grpc_input(images[:2].astype(np.int32), "INT32")], "INVALID_ARGUMENT", "input 'images': datatype 'INT32'"),
      ([grpc_input(np.full((1, 8, 8, 1), np.nan, np.float32), "FP32")], "INVALID_ARGUMENT", "'images': values must"),
      ([pixels], "INVALID_ARGUMENT", "unknown input 'pixels'"),
      ([grpc_input(np.zeros((0, 8, 8, 1), np.uint8), "UINT8")], "INVALID_ARGUMENT", "no images"),
      ([grpc_input(np.zeros((65, 8, 8, 1), np.uint8), "UINT8")], "INVALID_ARGUMENT", "(64 images)"),
      # 80 KB, over the 64 KB message limit: refused by gRPC before any parsing
      ([grpc_input(np.zeros((320, 8, 8, 1), np.float32), "FP32")], "RESOURCE_EXHAUSTED", "larger than max"),
  ]
  for inputs, want, words in cases:
    code, message = refused(lambda: c.infer("digits", inputs, headers=H))
    assert code == want and words in message, (want, words, code, message)
  assert refused(lambda: c.infer("nope", [good], headers=H))[0] == "NOT_FOUND"
  assert refused(lambda: c.infer("digits", [good], outputs=[tg.InferRequestedOutput("scores")], headers=H))[1] == \
      "unknown output 'scores'; this model has ['logits', 'probabilities']"
  r = c.infer("digits", [good], headers=H)  # still serving
  np.testing.assert_array_equal(r.as_numpy("logits").argmax(-1), reference[1][:2])
  metrics = requests.get(url + "/metrics", headers=H).text
  for status in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND"):
    assert (f'imgrec_requests_total{{method="GRPC",route="/inference.GRPCInferenceService/ModelInfer",'
            f'status="{status}"}}') in metrics, status


def test_proto_has_the_kserve_names_and_numbers_tritonclient_uses():
  """Every method, message and field of kserve_v2.proto exists in tritonclient's copy of the protocol under
  the same name, with the same number and type."""
  triton = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

  def fields(descriptor):
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return {f.name: (f.number, f.label, f.type, f.type_name) for f in proto.field}

  def same(ours, theirs):
    assert ours.full_name == theirs.full_name
    mine, other = fields(ours), fields(theirs)
    assert mine == {k: other.get(k) for k in mine}, ours.full_name
    for f in ours.fields:
      if f.message_type:
        same(f.message_type, theirs.fields_by_name[f.name].message_type)
  for name, (req, resp) in grpc_service.MESSAGES.items():
    same(req.DESCRIPTOR, triton.methods_by_name[name].input_type)
    same(resp.DESCRIPTOR, triton.methods_by_name[name].output_type)
  assert len(grpc_service.MESSAGES) == 11  # health, metadata, infer; config, statistics and the repository extension


def test_checked_in_descriptor_set_is_the_compiled_proto(tmp_path):
  """kserve_v2.binpb is regenerated with the command in kserve_v2.proto after every edit."""
  out = tmp_path / "kserve_v2.binpb"
  assert protoc.main(["protoc", f"-I{SERVE_DIR}", f"--descriptor_set_out={out}", "kserve_v2.proto"]) == 0
  fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
  with open(os.path.join(SERVE_DIR, "kserve_v2.binpb"), "rb") as f:
    assert descriptor_pb2.FileDescriptorSet.FromString(f.read()) == fresh
