"""qlinear.Client against a real server: every golden file through quantize
and load_quantized with forward within the golden tolerances (as
tests/server/server_test.cc), bfloat16 on the wire, zero-copy answers, the
layer callable, the other methods, and every bad input raising qlinear.Error
with its code."""

import grpc
import numpy as np
import pytest

import qlinear
from qlinear import _native
from conftest import golden_files


def tensor(f, name):
    """(array, dtype name) of a safetensors tensor; bf16 as uint16 bits."""
    t = f.tensor(name)
    np_dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U32": "<u4", "U8": "u1"}[t.dtype]
    return np.frombuffer(memoryview(t), dtype=np_dtype).reshape(t.shape), t.dtype


def as_f64(a, dtype):
    if dtype == "BF16":
        return _native.f32_from_bf16(a).astype(np.float64)
    return a.astype(np.float64)


def normalised_error(got, want):
    """max|got - want| / max|want| (absolute when want is all zero)."""
    err = np.max(np.abs(got - want))
    scale = np.max(np.abs(want))
    return err / scale if scale > 0 else err


WIRE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def test_every_golden_file_through_quantize_and_load_quantized(client):
    files = golden_files()
    for path in files:
        f = _native.open_safetensors(str(path))
        meta = f.metadata
        mode, bits, gs = meta["mode"], int(meta["bits"]), int(meta["group_size"])
        w, wd = tensor(f, "w")
        x, xd = tensor(f, "x")
        wq, _ = tensor(f, "wq")
        scales, sd = tensor(f, "scales")
        biases = tensor(f, "biases")[0] if "biases" in f.names() else None
        q = client.quantize("q/" + path.name, w, mode=mode, bits=bits, group_size=gs, dtype=WIRE[wd])
        assert q.error_report is not None
        assert (q.out_features, q.in_features) == w.shape
        l = client.load_quantized("l/" + path.name, wq, scales, biases, mode=mode, bits=bits, group_size=gs,
                                  scales_dtype=WIRE.get(sd))
        assert (l.mode, l.bits, l.group_size) == (mode, bits, gs)
        mlx_y = as_f64(*tensor(f, "y"))
        exact = as_f64(*tensor(f, "y_f32ref"))
        for name in ("q/" + path.name, "l/" + path.name):
            y = client.forward(name, x, in_dtype=WIRE[xd], request_id="id-" + name)
            assert y.shape == (x.shape[0], w.shape[0])
            assert y.dtype == (np.float16 if xd == "F16" else np.float32)  # bf16 comes back widened
            y = y.astype(np.float64)
            assert np.all(np.isfinite(y)), name
            if xd == "F32":
                assert normalised_error(y, mlx_y) <= 1e-5, name
            elif not path.name.startswith("edge_f16range"):
                assert normalised_error(y, exact) <= normalised_error(mlx_y, exact), name
    stats = client.stats()
    by_name = {l["name"]: l for l in stats["layers"]}
    for path in files:
        for name in ("q/" + path.name, "l/" + path.name):
            assert by_name[name]["requests_by_code"]["OK"] == "1"  # uint64 as JSON text
    for path in files:
        client.unload("q/" + path.name)
        client.unload("l/" + path.name)


def test_bf16_rounds_to_nearest_even_and_widens_exactly():
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0xFF800000, 0x00000001],
                    dtype=np.uint32)
    got = _native.bf16_from_f32(bits.view(np.float32))
    # ties go to even (0x3F80, 0x3F82), above a tie rounds up, the largest
    # float rounds to inf, -inf stays, the smallest subnormal rounds to +0
    assert list(got) == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xFF80, 0x0000]
    nan = _native.bf16_from_f32(np.array([np.nan], np.float32))
    assert np.isnan(_native.f32_from_bf16(nan))[0]
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    wide = _native.f32_from_bf16(every)
    assert np.array_equal(wide.view(np.uint32), every.astype(np.uint32) << 16)  # exact widening


@pytest.fixture
def small(client):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    info = client.quantize("small", w, b, bits=4, group_size=64, replace=True)
    yield info
    client.unload("small")


def test_bf16_input_is_the_rounded_float32_input(client, small):
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    y_bf16_in = client.forward("small", x, in_dtype="bf16", out_dtype="f32")
    rounded = _native.f32_from_bf16(_native.bf16_from_f32(x))
    y_f32_in = client.forward("small", rounded)
    assert y_bf16_in.dtype == np.float32
    assert np.array_equal(y_bf16_in.view(np.uint32), y_f32_in.view(np.uint32))
    y_bf16_out = client.forward("small", x, in_dtype="bf16")  # answered in bf16, widened
    assert np.array_equal(_native.f32_from_bf16(_native.bf16_from_f32(y_f32_in)), y_bf16_out)


def test_dtypes_follow_the_wire_rule(client, small):
    x = np.ones((2, 128), np.float16)
    assert client.forward("small", x).dtype == np.float16
    assert client.forward("small", x, out_dtype="f32").dtype == np.float32
    assert client.forward("small", x.astype(np.float32)).dtype == np.float32
    assert client.forward("small", x.astype(np.float64)).dtype == np.float32  # sent as float32


def test_answers_are_views_of_the_response_bytes(client, small):
    y = client.forward("small", np.ones((2, 128), np.float32))
    assert not y.flags.owndata and not y.flags.writeable
    assert isinstance(y.base, (bytes, memoryview)) or isinstance(getattr(y.base, "base", None), bytes)


def test_leading_dimensions_and_the_layer_callable(client, small):
    layer = client.layer("small")
    assert layer.info == small
    assert (layer.info.out_features, layer.info.in_features, layer.info.has_bias) == (64, 128, True)
    x = np.random.default_rng(2).standard_normal((2, 3, 128)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 3, 64)
    assert np.array_equal(y.reshape(6, 64), client.forward("small", x.reshape(6, 128)))
    assert layer(x[0, 0]).shape == (64,)


def test_list_get_stats_health(client, small):
    names = [l.name for l in client.list()]
    assert "small" in names and "demo" in names
    assert client.get("small").version == small.version
    s = client.stats("small")
    assert [l["name"] for l in s["layers"]] == ["small"]
    assert int(s["server"]["layers"]) >= 2
    assert client.health() == "SERVING"
    assert client.health("qlinear.v1.Data") == "SERVING"
    assert client.health("inference.GRPCInferenceService") == "SERVING"  # KServe v2's name too


def test_load_quantized_matches_quantize_bit_for_bit(client):
    f = _native.open_safetensors(str(golden_files()[0]))
    # nothing special about the first file: an MLX triplet and its weight
    meta = f.metadata
    w, wd = tensor(f, "w")
    wq, _ = tensor(f, "wq")
    scales, sd = tensor(f, "scales")
    biases = tensor(f, "biases")[0]
    x = np.random.default_rng(3).standard_normal((4, w.shape[1])).astype(np.float32)
    p = dict(mode=meta["mode"], bits=int(meta["bits"]), group_size=int(meta["group_size"]))
    client.quantize("a", w, dtype=WIRE[wd], **p)
    client.load_quantized("b", wq, scales, biases, scales_dtype=WIRE[sd], **p)
    ya, yb = client.forward("a", x), client.forward("b", x)
    assert np.array_equal(ya.view(np.uint32), yb.view(np.uint32))
    client.unload("a")
    client.unload("b")


def code_of(call):
    with pytest.raises(qlinear.Error) as e:
        call()
    assert isinstance(e.value.code, grpc.StatusCode)
    assert e.value.message, "every error carries the server's message"
    return e.value.code, e.value.message


def test_each_bad_input_raises_its_code(client, small):
    ok = np.ones((1, 128), np.float32)
    w = np.ones((8, 64), np.float32)
    cases = [
        # forward
        (lambda: client.forward("nope", ok), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.forward("small", np.ones((1, 100), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "100"),
        (lambda: client.forward("small", np.ones((0, 128), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "row"),
        (lambda: client.forward("small", np.float32(1)), grpc.StatusCode.INVALID_ARGUMENT, "scalar"),
        (lambda: client.forward("small", ok, in_dtype="int8"), grpc.StatusCode.INVALID_ARGUMENT, "in_dtype"),
        (lambda: client.forward("small", ok, out_dtype="u8"), grpc.StatusCode.INVALID_ARGUMENT, "out_dtype"),
        (lambda: client.forward("small", ok, precision="fast"), grpc.StatusCode.INVALID_ARGUMENT, "precision"),
        (lambda: client.forward("small", np.array([["a"] * 128])), grpc.StatusCode.INVALID_ARGUMENT, "numbers"),
        # quantize
        (lambda: client.quantize("small", w), grpc.StatusCode.ALREADY_EXISTS, "small"),
        (lambda: client.quantize("q", w, bits=7), grpc.StatusCode.INVALID_ARGUMENT, "got 7"),
        (lambda: client.quantize("q", np.ones((8, 48), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "48"),
        (lambda: client.quantize("q", np.ones(64, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "weight"),
        (lambda: client.quantize("q", w, mode="int4"), grpc.StatusCode.INVALID_ARGUMENT, "mode"),
        (lambda: client.quantize("q", np.full((8, 64), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (lambda: client.quantize("q", w, np.ones(7, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "bias"),
        (lambda: client.quantize("q", w, np.ones(8, np.float16)), grpc.StatusCode.INVALID_ARGUMENT, "one dtype"),
        # load_quantized
        (lambda: client.load_quantized("q", np.ones((8, 8), np.uint32), np.ones((8, 1), np.float32),
                                       np.ones((8, 2), np.float32), mode="affine", bits=4, group_size=64),
         grpc.StatusCode.INVALID_ARGUMENT, "biases"),
        (lambda: client.load_quantized("q", np.ones((8, 8), np.float32), np.ones((8, 1), np.float32),
                                       mode="affine", bits=4, group_size=64),
         grpc.StatusCode.INVALID_ARGUMENT, "uint32"),
        (lambda: client.load_quantized("q", np.ones((8, 8), np.uint32), np.full((8, 1), np.inf, np.float32),
                                       np.ones((8, 1), np.float32), mode="affine", bits=4, group_size=64),
         grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        # the rest
        (lambda: client.get("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.unload("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.stats("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.layer("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.upload("/nonexistent/model"), grpc.StatusCode.NOT_FOUND, "/nonexistent/model"),
    ]
    for call, want, word in cases:
        code, message = code_of(call)
        assert code == want, (message, want)
        assert word in message, (message, word)
    assert "q" not in [l.name for l in client.list()]


def test_an_unreachable_server_is_unavailable():
    with qlinear.Client("127.0.0.1:1", timeout=2) as c:
        code, _ = code_of(c.health)
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_short_deadline_is_deadline_exceeded(server):
    # 256 rows of the 4096x4096 demo layer take far more than a microsecond.
    with qlinear.Client(server.target, timeout=1e-6) as c:
        code, _ = code_of(lambda: c.forward("demo", np.ones((256, 4096), np.float32)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_token_travels_as_authorization_metadata(server):
    # The server here has no token files: both planes are open and a token
    # is ignored; what matters is that the call carries it and succeeds.
    with qlinear.Client(server.target, token="secret") as c:
        assert c._metadata == (("authorization", "Bearer secret"),)
        assert c.health() == "SERVING"
        assert c.forward("demo", np.ones((1, 4096), np.float32)).shape == (1, 4096)


def test_the_in_place_decoder_reads_what_protobuf_reads():
    from qlinear import _common
    from qlinear.v1 import qlinear_pb2 as pb
    rng = np.random.default_rng(6)
    for dtype, np_dtype in ((pb.F32, "<f4"), (pb.F16, "<f2")):
        y = rng.standard_normal((3, 5)).astype(np_dtype)
        m = pb.ForwardResponse(output=pb.Tensor(dtype=dtype, shape=[3, 5], data=y.tobytes()),
                               layer_version=300, request_id="r" * 200,
                               timing=pb.ServerTiming(queue_us=1 << 40, batch_rows=7))
        got = _common.decode_forward(m.SerializeToString())
        assert got.dtype == np.dtype(np_dtype) and got.shape == (3, 5)
        assert np.array_equal(got.view(np.uint8), y.view(np.uint8))
    bits = rng.integers(0, 1 << 16, size=(2, 4096), dtype=np.uint16)
    m = pb.ForwardResponse(output=pb.Tensor(dtype=pb.BF16, shape=[2, 4096], data=bits.tobytes()))
    got = _common.decode_forward(m.SerializeToString())
    assert np.array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)
    # fields in another order, and an unpacked shape, read the same
    raw = (pb.ForwardResponse(layer_version=2).SerializeToString() +
           bytes([0x0A, 0x0C, 0x1A, 0x04]) + np.float32(1.5).tobytes() + bytes([0x10, 0x01, 0x10, 0x01, 0x08, 0x01]))
    assert _common.decode_forward(raw).tolist() == [[1.5]]
    with pytest.raises(qlinear.Error) as e:
        _common.decode_forward(pb.ForwardResponse(output=pb.Tensor(dtype=pb.F32, shape=[2],
                                                                    data=b"1234")).SerializeToString())
    assert e.value.code == grpc.StatusCode.INTERNAL


def test_precision_modes_answer_with_the_mode_that_ran(client, small):
    """Issue 16: precision="exact"/"int8"/"bf16" (or the enum) selects the
    mode; return_info=True says which ran; the default call still returns
    the array alone, exact; stats count OK answers by the mode that ran."""
    from qlinear.v1 import qlinear_pb2 as pb
    x = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    exact = client.forward("small", x)
    assert isinstance(exact, np.ndarray)
    answers = {}
    for name, enum in (("exact", pb.EXACT), ("int8", pb.INT8), ("bf16", pb.BFLOAT16)):
        y, info = client.forward("small", x, precision=name, return_info=True, request_id="p-" + name)
        assert isinstance(info, qlinear.ForwardInfo)
        assert (info.precision, info.layer_version, info.request_id) == (name, small.version, "p-" + name)
        # The enum, and any case, ask for the same mode: the same bits.
        y2, info2 = client.forward("small", x, precision=enum, return_info=True)
        assert info2.precision == name
        assert np.array_equal(y.view(np.uint32), y2.view(np.uint32))
        assert np.array_equal(client.forward("small", x, precision=name.upper()).view(np.uint32),
                              y.view(np.uint32))
        answers[name] = y
    assert np.array_equal(answers["exact"].view(np.uint32), exact.view(np.uint32))
    assert not np.array_equal(answers["int8"], exact)  # int8 really ran
    assert not np.array_equal(answers["bf16"], exact)
    # Close to exact all the same (docs/formats.md bounds them precisely).
    assert normalised_error(answers["int8"].astype(np.float64), exact.astype(np.float64)) < 0.05
    assert normalised_error(answers["bf16"].astype(np.float64), exact.astype(np.float64)) < 0.05
    s = client.stats("small")["layers"][0]
    assert s["requests_by_precision"] == {"exact": "4", "int8": "3", "bf16": "3"}
    assert s["rows_by_precision"] == {"exact": "12", "int8": "9", "bf16": "9"}
    for bad in ("fast", 99, True, 1.5):
        with pytest.raises(qlinear.Error) as e:
            client.forward("small", x, precision=bad)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'exact', 'int8' or 'bf16'" in e.value.message


def test_int8_of_an_mxfp8_layer_runs_bf16(client):
    w = np.random.default_rng(8).standard_normal((32, 128)).astype(np.float32) * 0.05
    client.quantize("mx8", w, mode="mxfp8", replace=True)
    try:
        x = np.random.default_rng(9).standard_normal((2, 128)).astype(np.float32)
        y, info = client.forward("mx8", x, precision="int8", return_info=True)
        assert info.precision == "bf16"
        assert np.array_equal(y.view(np.uint32), client.forward("mx8", x, precision="bf16").view(np.uint32))
    finally:
        client.unload("mx8")


def test_a_server_refuses_precisions_it_does_not_allow():
    from conftest import Server
    s = Server("--precisions", "exact,bf16")
    try:
        with qlinear.Client(s.target) as c:
            x = np.ones((1, 4096), np.float32)
            with pytest.raises(qlinear.Error) as e:
                c.forward("demo", x, precision="int8")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.message == "precision int8 is not enabled on this server (--precisions exact,bf16)"
            assert c.forward("demo", x, precision="bf16", return_info=True)[1].precision == "bf16"
            layer = c.stats("demo")["layers"][0]
            assert layer["requests_by_code"] == {"INVALID_ARGUMENT": "1", "OK": "1"}
            assert layer["requests_by_precision"] == {"bf16": "1"}
    finally:
        s.stop()


def test_the_in_place_decoder_reads_precision_and_version():
    from qlinear import _common
    from qlinear.v1 import qlinear_pb2 as pb
    y = np.arange(4, dtype="<f4").reshape(2, 2)
    for wire, name in ((pb.EXACT, "exact"), (pb.INT8, "int8"), (pb.BFLOAT16, "bf16"),
                       (pb.PRECISION_UNSPECIFIED, "exact")):
        m = pb.ForwardResponse(output=pb.Tensor(dtype=pb.F32, shape=[2, 2], data=y.tobytes()),
                               layer_version=300, request_id="rid", precision=wire,
                               timing=pb.ServerTiming(queue_us=5))
        got, info = _common.decode_forward(m.SerializeToString(), True)
        assert np.array_equal(got, y)
        assert info == qlinear.ForwardInfo(name, 300, "rid")
