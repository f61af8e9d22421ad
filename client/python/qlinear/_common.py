"""What Client and AsyncClient share: errors, layer info, tensors on the wire,
upload chunks and the channel. No I/O happens here.

Tensors travel as raw little-endian bytes + dtype + shape. float32 and
float16 arrays travel as they are; bfloat16 (which numpy lacks) is sent as
float32 values rounded to nearest even, or as uint16 arrays of bfloat16 bits,
and comes back widened exactly to float32. Answers are numpy arrays over the
response's bytes (np.frombuffer: no copy, read-only).
"""

import dataclasses
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import grpc
import numpy as np

from qlinear import _native
from qlinear.v1 import qlinear_pb2 as pb

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 << 20  # the server's --max-message-mb default


class Error(Exception):
    """A call that failed: `code` is a grpc.StatusCode, `message` the
    server's (or the checkpoint reader's) message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_error(e: Exception) -> Error:
    """Error from a grpc.RpcError or a _native.StatusError."""
    if isinstance(e, _native.StatusError):
        code, message = e.args
        return Error(_CODES.get(code, grpc.StatusCode.UNKNOWN), message)
    return Error(e.code(), e.details() or "")


def invalid(message: str) -> Error:
    return Error(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A served layer, as GetLayer and the uploads answer."""

    name: str
    out_features: int
    in_features: int
    mode: str
    bits: int
    group_size: int
    weight_dtype: str
    has_bias: bool
    version: int
    bytes_held: int
    error_report: Optional[dict]  # max_abs, rms, rel_fro when quantized by the server
    origin: str  # "builtin", "model", "upload" or "state"
    source: str  # the file or folder it came from, when known

    @staticmethod
    def from_proto(m: "pb.LayerInfo") -> "LayerInfo":
        report = None
        if m.HasField("error_report"):
            r = m.error_report
            report = {"max_abs": r.max_abs, "rms": r.rms, "rel_fro": r.rel_fro}
        return LayerInfo(
            name=m.name,
            out_features=m.out_features,
            in_features=m.in_features,
            mode=pb.Mode.Name(m.spec.mode).lower(),
            bits=m.spec.bits,
            group_size=m.spec.group_size,
            weight_dtype=pb.DType.Name(m.weight_dtype),
            has_bias=m.has_bias,
            version=m.version,
            bytes_held=m.bytes_held,
            error_report=report,
            origin=pb.OriginKind.Name(m.origin.kind).lower(),
            source=m.origin.source,
        )


# --- dtypes ---------------------------------------------------------------

_DTYPE_NAMES = {
    "f32": pb.F32, "float32": pb.F32, "fp32": pb.F32,
    "f16": pb.F16, "float16": pb.F16, "fp16": pb.F16,
    "bf16": pb.BF16, "bfloat16": pb.BF16,
}
_NUMPY = {pb.F32: np.float32, pb.F16: np.float16, pb.U8: np.uint8, pb.U32: np.uint32}


def wire_dtype(name, what: str) -> int:
    """F32, F16 or BF16 from "f32"/"float32"/np.float32/... ."""
    if name is None:
        return pb.DTYPE_UNSPECIFIED
    key = name if isinstance(name, str) else np.dtype(name).name
    d = _DTYPE_NAMES.get(key.lower())
    if d is None:
        raise invalid(f"{what} must be f32, f16 or bf16; got {name!r}")
    return d


def to_wire(a, dtype: int, what: str) -> Tuple[int, np.ndarray]:
    """(wire dtype, C-contiguous array of its bytes) for `a` in `dtype`
    (DTYPE_UNSPECIFIED: float32 and float16 as they are, else float32).
    For BF16, a uint16 array holds bfloat16 bits already; float values are
    rounded to nearest even."""
    a = np.asarray(a)
    if dtype == pb.DTYPE_UNSPECIFIED:
        dtype = pb.F16 if a.dtype == np.float16 else pb.F32
    if dtype == pb.BF16:
        if a.dtype == np.uint16:
            return dtype, np.ascontiguousarray(a)
        return dtype, _native.bf16_from_f32(_floats(a, what))
    want = _NUMPY[dtype]
    if a.dtype != want:
        a = _floats(a, what).astype(want)
    return dtype, np.ascontiguousarray(a)


def _floats(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind not in "fiu":
        raise invalid(f"{what} must hold numbers; got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def _varint(b: bytes, i: int) -> Tuple[int, int]:
    c = b[i]
    if c < 0x80:  # the common case: one byte
        return c, i + 1
    v, shift = c & 0x7F, 7
    while True:
        i += 1
        c = b[i]
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i + 1
        shift += 7


def _skip(b: bytes, i: int, wt: int, field: int) -> int:
    if wt == 0:
        return _varint(b, i)[1]
    if wt == 2:
        n, i = _varint(b, i)
        return i + n
    if wt == 1:
        return i + 8
    if wt == 5:
        return i + 4
    raise Error(grpc.StatusCode.INTERNAL, f"ForwardResponse: wire type {wt} of field {field}")


_LITTLE = {d: np.dtype(t).newbyteorder("<") for d, t in _NUMPY.items()}


# Precision: the names forward() takes and ForwardInfo.precision reports,
# as the server's --precisions, Stats and metrics spell them.
_PRECISIONS = {"exact": pb.EXACT, "int8": pb.INT8, "bf16": pb.BFLOAT16}
_PRECISION_NAMES = {v: k for k, v in _PRECISIONS.items()}


@dataclasses.dataclass(frozen=True)
class ForwardInfo:
    """What the server says about one Forward (forward(..., return_info=True)):
    precision is the mode that ran, "exact", "int8" or "bf16" (INT8 asked of
    an mxfp8 layer runs "bf16"); layer_version the version that answered."""
    precision: str
    layer_version: int
    request_id: str


def decode_forward(raw: bytes, info: bool = False):
    """Forward's answer as an array over the response's own bytes: the
    ForwardResponse's output Tensor is read in place (dtype, shape, where
    its data lies), so the output is neither copied into a message nor into
    a bytes object; BF16 is widened exactly to float32 (a new array). With
    info=True, (array, ForwardInfo)."""
    dtype, shape, begin, size = pb.DTYPE_UNSPECIFIED, [], 0, 0
    precision, version, request_id = pb.PRECISION_UNSPECIFIED, 0, ""
    i, end = 0, len(raw)
    while i < end:
        key, i = _varint(raw, i)
        if key == 0x28:  # field 5, precision (varint)
            precision, i = _varint(raw, i)
            continue
        if key == 0x10:  # field 2, layer_version (varint)
            version, i = _varint(raw, i)
            continue
        if key == 0x1A and info:  # field 3, request_id
            n, i = _varint(raw, i)
            request_id, i = bytes(raw[i:i + n]).decode("utf-8", "replace"), i + n
            continue
        if key != 0x0A:  # field 1 (output, length-delimited) is the answer
            i = _skip(raw, i, key & 7, key >> 3)
            continue
        n, i = _varint(raw, i)
        j, stop, i = i, i + n, i + n
        while j < stop:
            key, j = _varint(raw, j)
            if key == 0x08:  # dtype
                dtype, j = _varint(raw, j)
            elif key == 0x12:  # shape, packed
                n, j = _varint(raw, j)
                last = j + n
                while j < last:
                    d, j = _varint(raw, j)
                    shape.append(d)
            elif key == 0x10:  # shape, one element
                d, j = _varint(raw, j)
                shape.append(d)
            elif key == 0x1A:  # data
                size, j = _varint(raw, j)
                begin, j = j, j + size
            else:
                j = _skip(raw, j, key & 7, key >> 3)
    count = 1
    for d in shape:
        count *= d
    if dtype == pb.BF16 and size == 2 * count:
        y = _native.f32_from_bf16(np.frombuffer(raw, "<u2", count, begin)).reshape(shape)
    else:
        np_dtype = _LITTLE.get(dtype)
        if np_dtype is None or not shape or size != count * np_dtype.itemsize:
            raise Error(grpc.StatusCode.INTERNAL, f"ForwardResponse: output of dtype {dtype}, shape {shape} "
                                                  f"holds {size} bytes")
        y = np.frombuffer(raw, np_dtype, count, begin).reshape(shape)
    if not info:
        return y
    # UNSPECIFIED (0): a server that predates the precision modes, which runs
    # exact. A number this client does not know is reported as itself.
    name = "exact" if precision == 0 else _PRECISION_NAMES.get(precision, f"unknown ({precision})")
    return y, ForwardInfo(name, version, request_id)


FORWARD = "/qlinear.v1.Data/Forward"


# --- requests ---------------------------------------------------------------

_MODES = {"affine": pb.AFFINE, "mxfp4": pb.MXFP4, "mxfp8": pb.MXFP8, "nvfp4": pb.NVFP4}


def spec(mode: Optional[str], bits: Optional[int], group_size: Optional[int]) -> "pb.QuantSpec":
    m = _MODES.get((mode or "affine").lower())
    if m is None:
        raise invalid(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    return pb.QuantSpec(mode=m, bits=bits or 0, group_size=group_size or 0)


def wire_precision(precision) -> int:
    """None (the server's default, exact), "exact", "int8" or "bf16" (any
    case), or a qlinear.v1 Precision number (pb.EXACT, pb.INT8,
    pb.BFLOAT16)."""
    if precision is None:
        return pb.PRECISION_UNSPECIFIED
    if isinstance(precision, str):
        p = _PRECISIONS.get(precision.lower())
        if p is not None:
            return p
    elif isinstance(precision, (int, np.integer)) and not isinstance(precision, bool):
        if int(precision) in pb.Precision.values():
            return int(precision)
    raise invalid(f"precision must be 'exact', 'int8' or 'bf16' (or None: exact); got {precision!r}")


def forward_request(layer, x, in_dtype, out_dtype, precision, request_id) -> "pb.ForwardRequest":
    a = np.asarray(x)
    if a.ndim < 1:
        raise invalid(f"x must have shape [..., in_features]; got a scalar")
    dtype, data = to_wire(a, wire_dtype(in_dtype, "in_dtype"), "x")
    prec = wire_precision(precision)
    return pb.ForwardRequest(
        layer=layer,
        input=pb.Tensor(dtype=dtype, shape=a.shape, data=data.tobytes()),
        output_dtype=wire_dtype(out_dtype, "out_dtype"),
        request_id=request_id or "",
        precision=prec,
    )


def _chunks(buf) -> Iterator[bytes]:
    """A buffer's bytes in CHUNK_BYTES pieces, copying one piece at a time."""
    mv = memoryview(buf).cast("B")
    for i in range(0, len(mv), CHUNK_BYTES):
        yield bytes(mv[i:i + CHUNK_BYTES])


def quantize_chunks(name, weight, bias, mode, bits, group_size, replace,
                    dtype=None) -> Iterator["pb.QuantizeChunk"]:
    w0 = np.asarray(weight)
    if w0.ndim != 2:
        raise invalid(f"weight must be [out_features, in_features]; got shape {list(w0.shape)}")
    dtype, w = to_wire(w0, wire_dtype(dtype, "dtype"), "weight")
    b = None
    if bias is not None:
        b = np.asarray(bias)
        if isinstance(bias, np.ndarray) and b.dtype.kind == "f" and b.dtype != w0.dtype:
            raise invalid(f"bias is {b.dtype} but the weight is {w0.dtype}; Quantize sends both in one dtype")
        _, b = to_wire(b, dtype, "bias")
    header = pb.QuantizeHeader(name=name, out_features=w.shape[0], in_features=w.shape[1], dtype=dtype,
                               spec=spec(mode, bits, group_size), has_bias=b is not None, replace=replace)
    return _quantize_stream(header, w, b)


def _quantize_stream(header, weight_buf, bias_buf):
    yield pb.QuantizeChunk(header=header)
    for c in _chunks(weight_buf):
        yield pb.QuantizeChunk(weight=c)
    if bias_buf is not None:
        for c in _chunks(bias_buf):
            yield pb.QuantizeChunk(bias=c)


def _scales_wire(a, what: str, scales_dtype) -> Tuple[int, np.ndarray]:
    a = np.asarray(a)
    if scales_dtype is None and a.dtype == np.uint8:
        return pb.U8, np.ascontiguousarray(a)
    return to_wire(a, wire_dtype(scales_dtype, "scales_dtype") if scales_dtype else pb.DTYPE_UNSPECIFIED, what)


def load_chunks(name, wq, scales, biases, bias, mode, bits, group_size, replace,
                scales_dtype=None, bias_dtype=None) -> Iterator["pb.LoadQuantizedChunk"]:
    q = np.asarray(wq)
    if q.ndim != 2 or q.dtype != np.uint32:
        raise invalid(f"wq must be uint32 [out_features, in_features*bits/32]; got {q.dtype} {list(q.shape)}")
    s = spec(mode, bits, group_size)
    if not s.bits:
        raise invalid("bits must be given for load_quantized")
    sd, sc = _scales_wire(scales, "scales", scales_dtype)
    bi = None
    if biases is not None:
        _, bi = _scales_wire(biases, "biases", scales_dtype if scales_dtype else _dtype_name(sd))
    bd, bb = pb.DTYPE_UNSPECIFIED, None
    if bias is not None:
        bd, bb = to_wire(bias, wire_dtype(bias_dtype, "bias_dtype"), "bias")
    header = pb.LoadQuantizedHeader(
        name=name, out_features=q.shape[0], in_features=q.shape[1] * 32 // s.bits, spec=s,
        scales_dtype=sd, has_bias=bb is not None, bias_dtype=bd, replace=replace)
    return load_stream(header, np.ascontiguousarray(q), sc, bi, bb)


def _dtype_name(d: int) -> Optional[str]:
    return {pb.F32: "f32", pb.F16: "f16", pb.BF16: "bf16"}.get(d)


def load_stream(header, weight, scales, biases, bias) -> Iterator["pb.LoadQuantizedChunk"]:
    """LoadQuantized's messages: the header, then each part in order."""
    yield pb.LoadQuantizedChunk(header=header)
    for field, buf in (("weight", weight), ("scales", scales), ("biases", biases), ("bias", bias)):
        if buf is not None:
            for c in _chunks(buf):
                yield pb.LoadQuantizedChunk(**{field: c})


# --- upload(path): the C++ checkpoint reader decides, Python streams --------

def checkpoint_plan(path, mode, bits, group_size, replace) -> List[Tuple[str, Iterator, bool]]:
    """Opens `path` through the C++ reader (core/checkpoint.h) and checks
    every layer before the first RPC, as `qlinear upload` does; returns
    (name, message iterator, quantized) per layer, in the reader's order."""
    try:
        cp = _native.open_checkpoint(str(path), mode, bits, group_size)
        for w in cp.warnings:
            warnings.warn(w, stacklevel=3)
        for tensor, shape, reason in cp.skipped:
            warnings.warn(f"'{tensor}' {shape} skipped: {reason}", stacklevel=3)
        layers = cp.layers()
        if not layers:
            raise invalid(f"'{path}' holds no 2-D float .weight tensor and no quantized triplet")
        for layer in layers:
            cp.validate(layer["index"])
            b = layer["bias"]
            if not layer["quantized"] and b is not None and b.dtype != layer["weight"].dtype:
                raise invalid(f"'{b.name}' is {b.dtype} but the weight is {layer['weight'].dtype}; "
                              "Quantize sends both in one dtype")
    except _native.StatusError as e:
        raise status_error(e) from None
    plan = []
    for layer in layers:
        s = pb.QuantSpec(mode=_MODES[layer["mode"]], bits=layer["bits"], group_size=layer["group_size"])
        n, k, b = layer["out_features"], layer["in_features"], layer["bias"]
        if layer["quantized"]:
            header = pb.LoadQuantizedHeader(
                name=layer["name"], out_features=n, in_features=k, spec=s,
                scales_dtype=pb.DType.Value(layer["scales"].dtype), has_bias=b is not None,
                bias_dtype=pb.DType.Value(b.dtype) if b is not None else pb.DTYPE_UNSPECIFIED,
                replace=replace)
            messages = load_stream(header, layer["weight"], layer["scales"], layer["biases"], b)
        else:
            header = pb.QuantizeHeader(
                name=layer["name"], out_features=n, in_features=k,
                dtype=pb.DType.Value(layer["weight"].dtype), spec=s, has_bias=b is not None,
                replace=replace)
            messages = _quantize_stream(header, layer["weight"], b)
        plan.append((layer["name"], messages, layer["quantized"]))
    return plan


def upload_failed(e: Error, name: str, plan: Sequence, published: List[str]) -> Error:
    """The Error of a refused layer, saying what was published and what not."""
    rest = [p[0] for p in plan[len(published):]]
    return Error(e.code, f"{name}: {e.message}; stopped after {len(published)} of {len(plan)} layers; "
                         f"published: {', '.join(published) or 'none'}; not published: {', '.join(rest)}")


# --- channel ------------------------------------------------------------------

# A balancing channel's service config: client/channel.cc's
# kBalancedServiceConfig, word for word (tests/python/test_balance.py checks).
BALANCED_SERVICE_CONFIG = (
    '{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""},'
    '"methodConfig":[{"name":[{"service":"qlinear.v1.Data","method":"Forward"},'
    '{"service":"inference.GRPCInferenceService","method":"ModelInfer"}],'
    '"retryPolicy":{"maxAttempts":5,"initialBackoff":"0.01s","maxBackoff":"0.2s",'
    '"backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE","CANCELLED"]}}]}')

_TARGET_FORMS = ("target takes HOST:PORT, a list of IPv4 or [IPv6] literals a:1,b:2 (one family), "
                 "or dns:///HOST:PORT for a name with several addresses")


def _literal_family(element: str) -> int:
    host, sep, port = element.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return 0
    import ipaddress
    try:
        if host.startswith("[") and host.endswith("]"):
            return 6 if ipaddress.ip_address(host[1:-1]).version == 6 else 0
        return 4 if ipaddress.ip_address(host).version == 4 else 0
    except ValueError:
        return 0


def parse_target(target: str) -> Tuple[str, List[str], bool]:
    """(gRPC target, replicas, balanced), as client/channel.h's ParseTarget:
    one HOST:PORT as it is; a list of IP literals "a:1,b:2" becomes
    "ipv4:a:1,b:2" (or ipv6:) and balances; "dns:///HOST:PORT" balances as
    it is. Raises Error(INVALID_ARGUMENT) for anything else."""
    if not target:
        raise invalid("target must be HOST:PORT; got ''")
    if "," not in target:
        return target, [target], target.startswith("dns:")
    elements = target.split(",")
    families = set()
    for e in elements:
        f = _literal_family(e)
        if f == 0:
            extra = " (an empty element)" if not e else ""
            raise invalid(f"{_TARGET_FORMS}; got '{e}' in '{target}'{extra}")
        families.add(f)
    if len(families) > 1:
        raise invalid(f"{_TARGET_FORMS}; got IPv4 and IPv6 mixed in '{target}'")
    scheme = "ipv4:" if families == {4} else "ipv6:"
    return scheme + ",".join(elements), elements, True


def channel_args(balanced: bool = False, authority: Optional[str] = None):
    args = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if balanced:
        args += [("grpc.service_config", BALANCED_SERVICE_CONFIG), ("grpc.enable_retries", 1),
                 ("grpc.per_rpc_retry_buffer_size", 4 << 20)]
    if authority:  # a list's URI path ("a:1,b:2") is no authority: the first replica's
        args.append(("grpc.default_authority", authority))
    return args


def open_channels(grpc_module, target: str, creds):
    """(channel, [(replica, channel)]) for grpc or grpc.aio: the channel for
    Data calls (balancing for several replicas), and one per replica for
    Admin calls, which act on each (the first is the Data channel itself
    when there is one replica)."""
    grpc_target, replicas, balanced = parse_target(target)

    def make(t, args):
        if creds is None:
            return grpc_module.insecure_channel(t, options=args)
        return grpc_module.secure_channel(t, creds, options=args)

    channel = make(grpc_target, channel_args(balanced, replicas[0] if len(replicas) > 1 else None))
    if len(replicas) == 1:
        return channel, [(replicas[0], channel)]
    return channel, [(r, make(r, channel_args())) for r in replicas]


def replicas_failed(failed: List[Tuple[str, "Error"]], done: List[str]) -> "Error":
    """The Error of an Admin call that failed on some replicas (not undone
    on those that succeeded)."""
    what = ", ".join(f"{r} ({e.code.name}: {e.message})" for r, e in failed)
    return Error(failed[0][1].code,
                 f"failed on {len(failed)} of {len(failed) + len(done)} replicas: {what}; "
                 f"succeeded on: {', '.join(done) or 'none'} (not undone there)")


def credentials(root_certificates, certificate_chain, private_key):
    """None for plaintext; TLS (mutual when a chain and key are given)."""
    if root_certificates is None and certificate_chain is None and private_key is None:
        return None
    if (certificate_chain is None) != (private_key is None):
        raise invalid("certificate_chain and private_key go together (mutual TLS); got only one")
    return grpc.ssl_channel_credentials(root_certificates=_pem(root_certificates),
                                        private_key=_pem(private_key),
                                        certificate_chain=_pem(certificate_chain))


def _pem(v):
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str) and v.lstrip().startswith("-----BEGIN"):
        return v.encode()
    with open(v, "rb") as f:  # a path
        return f.read()


def call_metadata(token) -> Optional[Tuple[Tuple[str, str], ...]]:
    return (("authorization", f"Bearer {token}"),) if token else None


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
