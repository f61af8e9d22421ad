"""qlinear.AsyncClient: 64 calls in flight on one channel, each answered with
its own row, bit-identical to the row sent alone; batches of more than one
row form (the session server waits up to 2 ms for company)."""

import asyncio

import grpc
import numpy as np
import pytest

import qlinear


def test_64_calls_in_flight_each_get_their_own_row(server, client):
    rng = np.random.default_rng(11)
    client.quantize("async", rng.standard_normal((256, 512)).astype(np.float32), bits=4, group_size=64,
                    replace=True)
    rows = rng.standard_normal((64, 512)).astype(np.float32)
    alone = [client.forward("async", rows[i:i + 1]) for i in range(64)]
    batches_before = int(client.stats("async")["layers"][0].get("batches", "0"))

    async def together():
        async with qlinear.AsyncClient(server.target) as ac:
            layer = await ac.layer("async")
            assert layer.info.in_features == 512
            return await asyncio.gather(*(layer(rows[i:i + 1]) for i in range(64)))

    answers = asyncio.run(together())
    for i in range(64):
        assert np.array_equal(answers[i].view(np.uint32), alone[i].view(np.uint32)), i
    s = client.stats("async")["layers"][0]
    batches = int(s["batches"]) - batches_before
    assert batches < 64, "concurrent calls should share batches"
    assert s["batch_rows"]["max"] > 1
    client.unload("async")


def test_async_errors_and_methods(server):
    async def run():
        async with qlinear.AsyncClient(server.target) as ac:
            assert await ac.health() == "SERVING"
            names = [l.name for l in await ac.list()]
            assert "demo" in names
            info = await ac.quantize("async2", np.ones((16, 64), np.float16), replace=True)
            assert info.weight_dtype == "F16"
            assert (await ac.get("async2")).version == info.version
            y = await ac.forward("async2", np.ones((2, 64), np.float16))
            assert y.dtype == np.float16 and y.shape == (2, 16)
            y8, info = await ac.forward("async2", np.ones((2, 64), np.float16), precision="int8",
                                        return_info=True)
            assert info.precision == "int8" and y8.shape == (2, 16)
            st = await ac.stats("async2")
            assert st["layers"][0]["name"] == "async2"
            await ac.unload("async2")
            with pytest.raises(qlinear.Error) as e:
                await ac.forward("async2", np.ones((2, 64), np.float16))
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(qlinear.Error) as e:
                await ac.forward("demo", np.ones((2, 63), np.float32))
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "4096" in e.value.message

    asyncio.run(run())
