"""Tokens and TLS from Python: Client and AsyncClient send `authorization:
Bearer TOKEN` on every call, over plaintext and over mutual TLS with
root_certificates / certificate_chain / private_key; the KServe v2 service
checks the same Data-plane tokens first in every method."""

import asyncio
import subprocess

import grpc
import numpy as np
import pytest

import qlinear
from conftest import Server

DATA = "data-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    (d / "data.tokens").write_text(f"app:{DATA}\n")
    (d / "admin.tokens").write_text(f"ops:{ADMIN}\n")
    return ["--data-token-file", str(d / "data.tokens"), "--admin-token-file", str(d / "admin.tokens")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("certs")

    def run(cmd):
        subprocess.run(cmd, shell=True, check=True, cwd=d, capture_output=True)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    run(f"openssl req -x509 {ec} -days 2 -keyout ca.key -out ca.pem -subj '/CN=qlinear test CA'")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        run(f"openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}")
        run(f"openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
            f"-out {name}.pem -extfile {name}.ext")
    return d


@pytest.fixture(scope="module")
def plain(token_files):
    s = Server(*token_files)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mtls(token_files, certs):
    tls = dict(root_certificates=str(certs / "ca.pem"), certificate_chain=str(certs / "client.pem"),
               private_key=str(certs / "client.key"))
    s = Server(*token_files, "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
               "--tls-client-ca", str(certs / "ca.pem"), client_args=tls)
    s.tls = tls
    yield s
    s.stop()


X = np.ones((1, 4096), np.float32)


def code(call):
    with pytest.raises(qlinear.Error) as e:
        call()
    return e.value.code


@pytest.mark.parametrize("which", ["plain", "mtls"])
def test_tokens_per_plane(request, which):
    s = request.getfixturevalue(which)
    tls = getattr(s, "tls", {})
    with qlinear.Client(s.target, **tls) as c:
        assert code(lambda: c.forward("demo", X)) == grpc.StatusCode.UNAUTHENTICATED
        assert c.health() == "SERVING"  # health is never checked
    with qlinear.Client(s.target, token="not-a-known-token-at-all", **tls) as c:
        assert code(lambda: c.list()) == grpc.StatusCode.UNAUTHENTICATED
    with qlinear.Client(s.target, token=DATA, **tls) as c:
        assert c.forward("demo", X).shape == (1, 4096)
        assert code(lambda: c.quantize("t", np.ones((8, 64), np.float32))) == grpc.StatusCode.PERMISSION_DENIED
    with qlinear.Client(s.target, token=ADMIN, **tls) as c:
        assert c.quantize("t", np.ones((8, 64), np.float32), replace=True).name == "t"
        c.unload("t")

    async def run():
        async with qlinear.AsyncClient(s.target, token=DATA, **tls) as ac:
            ys = await asyncio.gather(*(ac.forward("demo", X) for _ in range(8)))
            assert all(y.shape == (1, 4096) for y in ys)
        async with qlinear.AsyncClient(s.target, **tls) as ac:
            with pytest.raises(qlinear.Error) as e:
                await ac.forward("demo", X)
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(run())


def test_tls_needs_the_client_certificate(mtls, certs):
    with qlinear.Client(mtls.target, token=DATA, root_certificates=str(certs / "ca.pem"), timeout=5) as c:
        assert code(lambda: c.forward("demo", X)) == grpc.StatusCode.UNAVAILABLE
    with qlinear.Client(mtls.target, token=DATA, timeout=5) as c:  # plaintext to a TLS port
        assert code(lambda: c.forward("demo", X)) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(qlinear.Error) as e:
        qlinear.Client(mtls.target, certificate_chain=str(certs / "client.pem"))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "private_key" in e.value.message


def test_kserve_checks_the_data_tokens_first(v2, plain):
    pb, rpc = v2
    with grpc.insecure_channel(plain.target) as ch:
        s = rpc.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="demo", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4096])])
        req.raw_input_contents.append(X.tobytes())
        # Liveness and readiness are probes, open as gRPC health is.
        assert s.ServerLive(pb.ServerLiveRequest()).live
        assert s.ServerReady(pb.ServerReadyRequest()).ready
        for call, r in ((s.ModelReady, pb.ModelReadyRequest(name="demo")),
                        (s.ServerMetadata, pb.ServerMetadataRequest()),
                        (s.ModelMetadata, pb.ModelMetadataRequest(name="demo")), (s.ModelInfer, req)):
            with pytest.raises(grpc.RpcError) as e:
                call(r)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, call
        auth = (("authorization", f"Bearer {DATA}"),)
        assert s.ServerLive(pb.ServerLiveRequest(), metadata=auth).live
        r = s.ModelInfer(req, metadata=auth)
        assert list(r.outputs[0].shape) == [1, 4096]
        with qlinear.Client(plain.target, token=DATA) as c:
            y = c.forward("demo", X)
        assert r.raw_output_contents[0] == y.tobytes()
