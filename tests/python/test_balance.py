"""Client-side balancing in the Python client (qlinear._common's
parse_target and BALANCED_SERVICE_CONFIG, as client/channel.h): a target
listing three qlinear-server processes spreads Forwards round robin over
them, a replica that drains (SIGTERM) or dies (SIGKILL) mid-flow costs no
Forward, and Admin calls act on each replica, saying which failed."""

import asyncio
import re
import signal
import threading

import numpy as np
import pytest

import qlinear
from qlinear import _common
from conftest import ROOT, Server


def ok_on(target, layer):
    with qlinear.Client(target, timeout=10) as c:
        layers = c.stats(layer).get("layers", [])
        return int(layers[0].get("requests_by_code", {}).get("OK", 0)) if layers else 0


@pytest.fixture
def replicas(tmp_path):
    servers = [Server("--threads", "1", "--drain-timeout-s", "10", "--state-dir", str(tmp_path / f"s{i}"))
               for i in range(3)]
    yield servers
    for s in servers:
        if s.proc.poll() is None:
            s.stop()


def weight():
    return (np.arange(8 * 64, dtype=np.float32).reshape(8, 64) % 13) / 13 - 0.5


def test_targets_are_read_as_the_cpp_client_reads_them():
    assert _common.parse_target("10.0.0.1:5") == ("10.0.0.1:5", ["10.0.0.1:5"], False)
    assert _common.parse_target("10.0.0.1:5,10.0.0.2:6") == (
        "ipv4:10.0.0.1:5,10.0.0.2:6", ["10.0.0.1:5", "10.0.0.2:6"], True)
    assert _common.parse_target("[::1]:5,[::2]:6")[0] == "ipv6:[::1]:5,[::2]:6"
    assert _common.parse_target("dns:///svc:50051") == ("dns:///svc:50051", ["dns:///svc:50051"], True)
    for bad, want in [("a:1,b:2", "got 'a:1'"), ("10.0.0.1:5,", "(an empty element)"),
                      ("10.0.0.1:5,[::1]:6", "IPv4 and IPv6 mixed"), ("10.0.0.1:5,10.0.0.2:0", "got '10.0.0.2:0'")]:
        with pytest.raises(qlinear.Error, match=re.escape(want)) as e:
            qlinear.Client(bad)
        assert "dns:///HOST:PORT" in e.value.message
    # The service config is client/channel.cc's, word for word.
    source = (ROOT / "client/channel.cc").read_text()
    body = source[source.index("const char kBalancedServiceConfig[] ="):]
    body = body[:body.index(";\n")]
    assert "".join(re.findall(r'R"\((.*?)\)"', body)) == _common.BALANCED_SERVICE_CONFIG


def test_round_robin_reaches_each_replica_and_admin_calls_reach_all(replicas):
    targets = [s.target for s in replicas]
    with qlinear.Client(",".join(targets)) as client:
        info = client.quantize("l", weight())
        assert info.name == "l"
        for t in targets:
            with qlinear.Client(t) as one:
                assert [l.name for l in one.list()] == ["l"]
        x = np.full((1, 64), 0.25, dtype=np.float32)
        for _ in range(30):
            client.forward("l", x)
    counts = [ok_on(t, "l") for t in targets]
    assert all(n >= 1 for n in counts), counts
    assert sum(counts) == 30

    async def many():
        async with qlinear.AsyncClient(",".join(targets)) as ac:
            ys = await asyncio.gather(*(ac.forward("l", x) for _ in range(30)))
            await ac.unload("l")
            return ys
    assert len(asyncio.run(many())) == 30
    for t in targets:
        with qlinear.Client(t) as one:
            assert one.list() == []


def test_a_draining_and_a_dead_replica_cost_no_forward(replicas):
    targets = [s.target for s in replicas]
    client = qlinear.Client(",".join(targets))
    client.quantize("l", weight())
    x = np.full((1, 64), 0.25, dtype=np.float32)
    cv = threading.Condition()
    answered, failures, stop = [0], [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                client.forward("l", x)
                err = None
            except qlinear.Error as e:
                err = e
            with cv:
                answered[0] += 1
                if err is not None:
                    failures.append(str(err))
                cv.notify_all()

    def wait_for(more):
        with cv:
            want = answered[0] + more
            cv.wait_for(lambda: answered[0] >= want)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(100)
    replicas[0].proc.send_signal(signal.SIGTERM)  # drains while calls keep coming
    wait_for(100)
    assert replicas[0].proc.wait() == 0
    wait_for(100)
    replicas[1].proc.kill()
    replicas[1].proc.wait()
    wait_for(200)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert ok_on(targets[2], "l") > 0

    # Admin calls with dead replicas: the live one gets the layer, the
    # Error names those that failed.
    with pytest.raises(qlinear.Error) as e:
        qlinear.Client(",".join(targets), timeout=5).quantize("m", weight())
    assert e.value.message.startswith(f"failed on 2 of 3 replicas: {targets[0]} (UNAVAILABLE")
    assert f"succeeded on: {targets[2]} (not undone there)" in e.value.message
    with qlinear.Client(targets[2]) as one:
        assert sorted(l.name for l in one.list()) == ["l", "m"]
    client.close()
