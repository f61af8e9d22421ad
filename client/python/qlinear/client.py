"""qlinear.Client: a blocking client for qlinear-server (qlinear.v1).

Every call has a deadline (`timeout` seconds from its start) and, with a
token, the metadata `authorization: Bearer TOKEN`. Failures raise
qlinear.Error with the server's code and message. A Client may be used from
many threads at once (gRPC channels are thread-safe).
"""

from typing import Dict, List, Optional

import grpc
import numpy as np
from google.protobuf import json_format

from qlinear import _common as c
from qlinear import health_pb2
from qlinear.v1 import qlinear_pb2 as pb
from qlinear.v1 import qlinear_pb2_grpc as rpc


class Layer:
    """A served layer as a callable: layer(x) is y = x · dequantize(W)ᵀ + bias,
    like mlx.nn.QuantizedLinear's __call__ on numpy input (same leading
    dimensions, the input's dtype). `info` is its LayerInfo, read when the
    Layer was made."""

    def __init__(self, client, info: c.LayerInfo):
        self._client = client
        self.info = info

    def __call__(self, x):
        return self._client.forward(self.info.name, x)

    def __repr__(self):
        i = self.info
        return (f"Layer({i.name!r}, [{i.out_features}, {i.in_features}] {i.mode} b{i.bits} "
                f"g{i.group_size}, version {i.version})")


class Client:
    """Client(target="127.0.0.1:50051", *, timeout=60.0, token=None,
    root_certificates=None, certificate_chain=None, private_key=None).

    TLS when any certificate is given (PEM bytes, PEM text or a path);
    mutual TLS with certificate_chain and private_key. A context manager:
    leaving it closes the channel.

    Several replicas: target "a:1,b:2,c:3" (IP literals) or
    "dns:///HOST:PORT" balances Data calls (forward, list, get, stats,
    health) round robin over the replicas that report SERVING, Forward
    retried on UNAVAILABLE; Admin calls (quantize, load_quantized, upload,
    unload) act on each listed replica in turn (a dns:/// name is one), and
    a failure on any raises an Error naming those that failed; those that
    succeeded are not undone."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float = 60.0, token: Optional[str] = None,
                 root_certificates=None, certificate_chain=None, private_key=None):
        creds = c.credentials(root_certificates, certificate_chain, private_key)
        # Several replicas (c.parse_target): Data calls balance, Admin calls act on each.
        self._channel, admin_channels = c.open_channels(grpc, target, creds)
        self._admin_channels = [ch for _, ch in admin_channels if ch is not self._channel]
        self._admins = [(r, rpc.AdminStub(ch)) for r, ch in admin_channels]
        self._timeout = timeout
        self._metadata = c.call_metadata(token)
        self._data = rpc.DataStub(self._channel)
        # Forward's answer stays bytes: decode_forward reads it in place.
        self._forward = self._channel.unary_unary(
            c.FORWARD, request_serializer=pb.ForwardRequest.SerializeToString, response_deserializer=None)
        self._health = self._channel.unary_unary(
            c.HEALTH_CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)

    def close(self):
        for ch in self._admin_channels:
            ch.close()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise c.status_error(e) from None

    def _each(self, act):
        """act(Admin stub) on each replica in turn; the first one's answer.
        With several replicas, a failure on any raises an Error naming those
        that failed and those that succeeded (which keep what they got)."""
        answers, done, failed = [], [], []
        for replica, admin in self._admins:
            try:
                answers.append(act(admin))
                done.append(replica)
            except c.Error as e:
                if len(self._admins) == 1:
                    raise
                failed.append((replica, e))
        if failed:
            raise c.replicas_failed(failed, done)
        return answers[0]

    def forward(self, layer: str, x, *, in_dtype=None, out_dtype=None, precision=None,
                request_id=None, return_info=False):
        """y = x · dequantize(W)ᵀ + bias for x of shape [..., in_features].
        float32 and float16 travel as they are and come back in that dtype
        unless out_dtype says otherwise; in_dtype="bf16" sends bfloat16
        (rounded to nearest even); a bf16 answer comes back as float32
        (widened exactly). precision: None or "exact" (the default, MLX's
        bits), "int8" or "bf16" (opt-in, faster; the server's --precisions
        must allow it). return_info=True returns (y, ForwardInfo), whose
        .precision is the mode that ran."""
        raw = self._call(self._forward, c.forward_request(layer, x, in_dtype, out_dtype, precision, request_id))
        return c.decode_forward(raw, return_info)

    def quantize(self, name: str, weight, bias=None, *, mode="affine", bits=None, group_size=None,
                 replace=False, dtype=None) -> c.LayerInfo:
        """Quantizes a float weight [out_features, in_features] (float32 or
        float16 as they are; dtype="bf16" sends bfloat16: uint16 bits, or
        floats rounded to nearest even) on the server, MLX-exact, in the
        dtype it travels in; streamed in 1 MiB chunks."""
        return c.LayerInfo.from_proto(self._each(lambda admin: self._call(
            admin.Quantize, c.quantize_chunks(name, weight, bias, mode, bits, group_size, replace, dtype))).layer)

    def load_quantized(self, name: str, wq, scales, biases=None, bias=None, *, mode, bits, group_size,
                       replace=False, scales_dtype=None, bias_dtype=None) -> c.LayerInfo:
        """Loads an MLX-quantized layer as mlx.core.quantize wrote it: wq
        uint32 [N, K*bits/32], scales (and, affine, biases) [N, K/group_size]
        in float32/float16 (uint8 codes for the fp modes). bfloat16 scales,
        biases or bias: pass scales_dtype="bf16" / bias_dtype="bf16" with
        uint16 arrays of their bits (or floats to round)."""
        return c.LayerInfo.from_proto(self._each(lambda admin: self._call(
            admin.LoadQuantized, c.load_chunks(name, wq, scales, biases, bias, mode, bits, group_size, replace,
                                               scales_dtype, bias_dtype))).layer)

    def upload(self, path, *, mode=None, bits=None, group_size=None, replace=False) -> List[c.LayerInfo]:
        """Uploads a .safetensors file or an mlx-lm folder, read by the C++
        checkpoint reader (core/checkpoint.h): every layer is checked before
        the first RPC; quantized triplets go through LoadQuantized, float
        weights through Quantize (with mode/bits/group_size). A refusal
        part-way raises an Error saying what was published."""
        def upload_to(admin):  # the whole checkpoint to one replica
            plan = c.checkpoint_plan(path, mode, bits, group_size, replace)
            published, infos = [], []
            for name, messages, quantized in plan:
                method = admin.LoadQuantized if quantized else admin.Quantize
                try:
                    infos.append(c.LayerInfo.from_proto(self._call(method, messages).layer))
                except c.Error as e:
                    raise c.upload_failed(e, name, plan, published) from None
                published.append(name)
            return infos
        return self._each(upload_to)

    def list(self) -> List[c.LayerInfo]:
        return [c.LayerInfo.from_proto(m) for m in self._call(self._data.ListLayers, pb.ListLayersRequest()).layers]

    def get(self, name: str) -> c.LayerInfo:
        return c.LayerInfo.from_proto(self._call(self._data.GetLayer, pb.GetLayerRequest(name=name)))

    def unload(self, name: str) -> None:
        self._each(lambda admin: self._call(admin.UnloadLayer, pb.UnloadLayerRequest(name=name)))

    def stats(self, layer: Optional[str] = None) -> Dict:
        """The server's Stats answer as a dict (proto field names)."""
        r = self._call(self._data.Stats, pb.StatsRequest(layer=layer or ""))
        return json_format.MessageToDict(r, preserving_proto_field_name=True)

    def health(self, service: str = "") -> str:
        """"SERVING" or "NOT_SERVING" (grpc.health.v1)."""
        r = self._call(self._health, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def layer(self, name: str) -> Layer:
        return Layer(self, self.get(name))
