"""qlinear.AsyncClient: Client's methods as coroutines on grpc.aio, for many
calls in flight from one thread:

    async with qlinear.AsyncClient("127.0.0.1:50051") as client:
        ys = await asyncio.gather(*(client.forward("demo", x) for x in rows))

Same arguments, answers and errors as qlinear.Client. Use it from one event
loop (grpc.aio's rule).
"""

from typing import Dict, List, Optional

import grpc
import numpy as np
from google.protobuf import json_format

from qlinear import _common as c
from qlinear import health_pb2
from qlinear.v1 import qlinear_pb2 as pb
from qlinear.v1 import qlinear_pb2_grpc as rpc


class AsyncLayer:
    """client.layer(name) of an AsyncClient: `await layer(x)`."""

    def __init__(self, client, info: c.LayerInfo):
        self._client = client
        self.info = info

    async def __call__(self, x):
        return await self._client.forward(self.info.name, x)


class AsyncClient:
    """AsyncClient(target="127.0.0.1:50051", *, timeout=60.0, token=None,
    root_certificates=None, certificate_chain=None, private_key=None); an
    async context manager. Several replicas as in qlinear.Client: Data
    calls balance, Admin calls act on each."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float = 60.0, token: Optional[str] = None,
                 root_certificates=None, certificate_chain=None, private_key=None):
        creds = c.credentials(root_certificates, certificate_chain, private_key)
        # Several replicas (c.parse_target): Data calls balance, Admin calls act on each.
        self._channel, admin_channels = c.open_channels(grpc.aio, target, creds)
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

    async def close(self):
        for ch in self._admin_channels:
            await ch.close()
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise c.status_error(e) from None

    async def _each(self, act):
        """act(Admin stub) on each replica in turn; the first one's answer.
        With several replicas, a failure on any raises an Error naming those
        that failed and those that succeeded (which keep what they got)."""
        answers, done, failed = [], [], []
        for replica, admin in self._admins:
            try:
                answers.append(await act(admin))
                done.append(replica)
            except c.Error as e:
                if len(self._admins) == 1:
                    raise
                failed.append((replica, e))
        if failed:
            raise c.replicas_failed(failed, done)
        return answers[0]

    async def forward(self, layer: str, x, *, in_dtype=None, out_dtype=None, precision=None,
                      request_id=None, return_info=False):
        raw = await self._call(self._forward,
                               c.forward_request(layer, x, in_dtype, out_dtype, precision, request_id))
        return c.decode_forward(raw, return_info)

    async def quantize(self, name: str, weight, bias=None, *, mode="affine", bits=None, group_size=None,
                       replace=False, dtype=None) -> c.LayerInfo:
        return c.LayerInfo.from_proto((await self._each(lambda admin: self._call(
            admin.Quantize, c.quantize_chunks(name, weight, bias, mode, bits, group_size, replace, dtype)))).layer)

    async def load_quantized(self, name: str, wq, scales, biases=None, bias=None, *, mode, bits, group_size,
                             replace=False, scales_dtype=None, bias_dtype=None) -> c.LayerInfo:
        return c.LayerInfo.from_proto((await self._each(lambda admin: self._call(
            admin.LoadQuantized, c.load_chunks(name, wq, scales, biases, bias, mode, bits, group_size, replace,
                                               scales_dtype, bias_dtype)))).layer)

    async def upload(self, path, *, mode=None, bits=None, group_size=None, replace=False) -> List[c.LayerInfo]:
        async def upload_to(admin):  # the whole checkpoint to one replica
            plan = c.checkpoint_plan(path, mode, bits, group_size, replace)
            published, infos = [], []
            for name, messages, quantized in plan:
                method = admin.LoadQuantized if quantized else admin.Quantize
                try:
                    infos.append(c.LayerInfo.from_proto((await self._call(method, messages)).layer))
                except c.Error as e:
                    raise c.upload_failed(e, name, plan, published) from None
                published.append(name)
            return infos
        return await self._each(upload_to)

    async def list(self) -> List[c.LayerInfo]:
        r = await self._call(self._data.ListLayers, pb.ListLayersRequest())
        return [c.LayerInfo.from_proto(m) for m in r.layers]

    async def get(self, name: str) -> c.LayerInfo:
        return c.LayerInfo.from_proto(await self._call(self._data.GetLayer, pb.GetLayerRequest(name=name)))

    async def unload(self, name: str) -> None:
        await self._each(lambda admin: self._call(admin.UnloadLayer, pb.UnloadLayerRequest(name=name)))

    async def stats(self, layer: Optional[str] = None) -> Dict:
        r = await self._call(self._data.Stats, pb.StatsRequest(layer=layer or ""))
        return json_format.MessageToDict(r, preserving_proto_field_name=True)

    async def health(self, service: str = "") -> str:
        r = await self._call(self._health, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    async def layer(self, name: str) -> AsyncLayer:
        return AsyncLayer(self, await self.get(name))
