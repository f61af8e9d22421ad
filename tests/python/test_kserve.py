"""The Open Inference Protocol (KServe v2) on the server's port, spoken with
stubs this test generates itself from proto/kserve/grpc_predict_v2.proto
(protoc + grpc_python_plugin), not through the qlinear package: health and
metadata, ModelInfer with raw and typed contents, FP16 and BF16, shape and
datatype errors, unknown models and versions, and answers bit-identical to
Forward's for the same rows."""

import grpc
import numpy as np
import pytest

from qlinear import _native


@pytest.fixture
def stub(v2, server):
    channel = grpc.insecure_channel(server.target)
    yield v2[0], v2[1].GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture
def model(client):
    rng = np.random.default_rng(3)
    info = client.quantize("v2", rng.standard_normal((48, 128)).astype(np.float32),
                           rng.standard_normal(48).astype(np.float32), bits=4, group_size=64, replace=True)
    yield info
    client.unload("v2")


def infer(pb, name, x, datatype, *, typed=False, version="", rid="r1", outputs=None):
    t = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=list(x.shape))
    req = pb.ModelInferRequest(model_name=name, model_version=version, id=rid, inputs=[t])
    if typed:
        req.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    else:
        req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    for o in outputs or []:
        req.outputs.add(name=o)
    return req


def test_health_and_server_metadata(stub):
    pb, s = stub
    assert s.ServerLive(pb.ServerLiveRequest()).live
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    m = s.ServerMetadata(pb.ServerMetadataRequest())
    assert m.name == "qlinear" and m.version == "0.1.0"


def test_model_ready_and_metadata(stub, model):
    pb, s = stub
    assert s.ModelReady(pb.ModelReadyRequest(name="v2")).ready
    assert s.ModelReady(pb.ModelReadyRequest(name="v2", version=str(model.version))).ready
    assert not s.ModelReady(pb.ModelReadyRequest(name="v2", version=str(model.version + 1))).ready
    assert not s.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    m = s.ModelMetadata(pb.ModelMetadataRequest(name="v2"))
    assert m.name == "v2" and list(m.versions) == [str(model.version)] and m.platform == "qlinear"
    assert [(i.name, i.datatype, list(i.shape)) for i in m.inputs] == [("x", "FP32", [-1, 128])]
    assert [(o.name, o.datatype, list(o.shape)) for o in m.outputs] == [("y", "FP32", [-1, 48])]
    with pytest.raises(grpc.RpcError) as e:
        s.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        s.ModelMetadata(pb.ModelMetadataRequest(name="v2", version="999999"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"the version available is '{model.version}'" in e.value.details()


def raw_output(pb, r, dtype):
    assert len(r.outputs) == 1 and r.outputs[0].name == "y"
    return np.frombuffer(r.raw_output_contents[0], dtype=dtype).reshape(tuple(r.outputs[0].shape))


def test_infer_raw_and_typed_fp32_are_bit_identical_to_forward(stub, model, client):
    pb, s = stub
    x = np.random.default_rng(9).standard_normal((5, 128)).astype(np.float32)
    want = client.forward("v2", x)
    for typed in (False, True):
        r = s.ModelInfer(infer(pb, "v2", x, "FP32", typed=typed, rid="abc", outputs=["y"]))
        assert (r.model_name, r.model_version, r.id) == ("v2", str(model.version), "abc")
        assert r.outputs[0].datatype == "FP32" and list(r.outputs[0].shape) == [5, 48]
        y = raw_output(pb, r, "<f4")
        assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), typed
        assert r.parameters["batch_rows"].int64_param >= 5
    # the version asked for explicitly
    r = s.ModelInfer(infer(pb, "v2", x, "FP32", version=str(model.version)))
    assert np.array_equal(raw_output(pb, r, "<f4").view(np.uint32), want.view(np.uint32))


def test_infer_fp16_and_bf16_raw_are_bit_identical_to_forward(stub, model, client):
    pb, s = stub
    x = np.random.default_rng(4).standard_normal((3, 128)).astype(np.float32)
    x16 = x.astype(np.float16)
    r = s.ModelInfer(infer(pb, "v2", x16, "FP16"))
    assert r.outputs[0].datatype == "FP16"
    assert np.array_equal(raw_output(pb, r, "<u2"), client.forward("v2", x16).view(np.uint16))
    bf = _native.bf16_from_f32(x)
    r = s.ModelInfer(infer(pb, "v2", bf, "BF16"))
    assert r.outputs[0].datatype == "BF16"
    want = _native.bf16_from_f32(client.forward("v2", bf, in_dtype="bf16"))  # widened, so exact
    assert np.array_equal(raw_output(pb, r, "<u2"), want)


def test_infer_errors(stub, model):
    pb, s = stub
    x = np.ones((2, 128), np.float32)
    bad_rank = infer(pb, "v2", x, "FP32")
    bad_rank.inputs[0].ClearField("shape")
    bad_rank.inputs[0].shape.extend([256])
    two_inputs = infer(pb, "v2", x, "FP32")
    two_inputs.inputs.add(name="z", datatype="FP32", shape=[1])
    both = infer(pb, "v2", x, "FP32")
    both.inputs[0].contents.fp32_contents.extend([1.0] * 256)
    short = infer(pb, "v2", x, "FP32")
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    typed_short = infer(pb, "v2", x, "FP32", typed=True)
    del typed_short.inputs[0].contents.fp32_contents[-1]
    huge = infer(pb, "v2", x, "FP32")
    huge.inputs[0].shape[0] = 1 << 40
    negative = infer(pb, "v2", x, "FP32")
    negative.inputs[0].shape[0] = -2
    wrong_name = infer(pb, "v2", x, "FP32")
    wrong_name.inputs[0].name = "input0"
    cases = [
        (infer(pb, "nope", x, "FP32"), grpc.StatusCode.NOT_FOUND, "nope"),
        (infer(pb, "v2", x, "FP32", version="999999"), grpc.StatusCode.NOT_FOUND,
         f"the version available is '{model.version}'"),
        (infer(pb, "v2", np.ones((2, 64), np.float32), "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "128"),
        (bad_rank, grpc.StatusCode.INVALID_ARGUMENT, "shape must be [-1, 128]; got [256]"),
        (negative, grpc.StatusCode.INVALID_ARGUMENT, "shape must be [-1, 128]; got [-2, 128]"),
        (huge, grpc.StatusCode.INVALID_ARGUMENT, "more than 2^40 elements"),
        (infer(pb, "v2", np.ones((2, 128), np.int8), "INT8"), grpc.StatusCode.INVALID_ARGUMENT,
         "FP32, FP16 or BF16; got 'INT8'"),
        (infer(pb, "v2", x.astype(np.float16), "FP16", typed=True), grpc.StatusCode.INVALID_ARGUMENT,
         "raw_input_contents"),
        (short, grpc.StatusCode.INVALID_ARGUMENT, "needs 1024"),
        (typed_short, grpc.StatusCode.INVALID_ARGUMENT, "needs 256"),
        (both, grpc.StatusCode.INVALID_ARGUMENT, "both"),
        (two_inputs, grpc.StatusCode.INVALID_ARGUMENT, "one input 'x'; got 2"),
        (wrong_name, grpc.StatusCode.INVALID_ARGUMENT, "got 'input0'"),
        (infer(pb, "v2", x, "FP32", outputs=["z"]), grpc.StatusCode.INVALID_ARGUMENT, "'z' was requested"),
        (infer(pb, "v2", np.ones((0, 128), np.float32), "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "row"),
    ]
    for req, code, words in cases:
        with pytest.raises(grpc.RpcError) as e:
            s.ModelInfer(req)
        assert e.value.code() == code, (e.value.details(), code)
        assert words in e.value.details(), (words, e.value.details())


def test_infer_precision_parameter(stub, model, client):
    """Issue 16: the request parameter "precision" (exact, int8, bf16)
    selects the mode; the response's parameter says which ran; the answer
    is Forward's in that mode bit for bit; anything else is
    INVALID_ARGUMENT naming the accepted values."""
    pb, s = stub
    x = np.random.default_rng(10).standard_normal((4, 128)).astype(np.float32)
    r = s.ModelInfer(infer(pb, "v2", x, "FP32"))
    assert r.parameters["precision"].string_param == "exact"
    for name in ("exact", "int8", "bf16"):
        req = infer(pb, "v2", x, "FP32")
        req.parameters["precision"].string_param = name
        r = s.ModelInfer(req)
        assert r.parameters["precision"].string_param == name
        want = client.forward("v2", x, precision=name)
        assert np.array_equal(raw_output(pb, r, "<f4").view(np.uint32), want.view(np.uint32)), name
    for bad in ("fast", "INT8", None):
        req = infer(pb, "v2", x, "FP32")
        if bad is None:
            req.parameters["precision"].int64_param = 2
        else:
            req.parameters["precision"].string_param = bad
        with pytest.raises(grpc.RpcError) as e:
            s.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parameter 'precision' must be a string, exact, int8 or bf16" in e.value.details()


def test_infer_shares_batches_with_forward_rows(stub, model, server):
    # ModelInfer goes through the same engine: concurrent v2 calls batch.
    pb, s = stub
    rows = np.random.default_rng(8).standard_normal((32, 128)).astype(np.float32)
    alone = [raw_output(pb, s.ModelInfer(infer(pb, "v2", rows[i:i + 1], "FP32")), "<f4") for i in range(32)]
    futures = [s.ModelInfer.future(infer(pb, "v2", rows[i:i + 1], "FP32")) for i in range(32)]
    answers = [f.result() for f in futures]
    biggest = max(r.parameters["batch_rows"].int64_param for r in answers)
    for i, r in enumerate(answers):
        assert np.array_equal(raw_output(pb, r, "<f4").view(np.uint32), alone[i].view(np.uint32)), i
    assert biggest > 1
