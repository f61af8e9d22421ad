"""Fixtures for the Python client and KServe v2 tests: a real qlinear-server
on a free loopback port (--listen 127.0.0.1:0; the port is read from its
start-up line), the package from the build tree, the shared data.

Environment: QLINEAR_BUILD_DIR (default: build/ of the repository),
QLINEAR_SERVER (default: its qlinear-server), QLINEAR_GOLDEN_DIR,
QLINEAR_MLX_LM_DIR (default: ../shared/...).
"""

import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("QLINEAR_BUILD_DIR", ROOT / "build")).resolve()
GOLDEN = pathlib.Path(os.environ.get("QLINEAR_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))
MLX_LM = pathlib.Path(os.environ.get("QLINEAR_MLX_LM_DIR", ROOT.parent / "shared" / "mlx-lm"))

sys.path.insert(0, str(BUILD / "python"))

import qlinear  # noqa: E402  (from the build tree)


class Server:
    """qlinear-server in a child process; stop() kills it."""

    def __init__(self, *args, env=None, client_args=None):
        binary = pathlib.Path(os.environ.get("QLINEAR_SERVER", BUILD / "qlinear-server"))
        assert binary.exists(), f"{binary} is missing: build it first"
        child_env = dict(os.environ, QLINEAR_METRICS_LISTEN="127.0.0.1:0", **(env or {}))
        self.proc = subprocess.Popen([str(binary), "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=child_env)
        self.lines = []
        # The start-up line comes once the layers are loaded (the demo layer
        # takes a moment to build); its address says which port was picked.
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
            if m:
                self.target = m.group(1)
                break
        else:
            raise RuntimeError("qlinear-server exited before listening:\n" + "".join(self.lines))
        # Keep draining its output so that it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        with qlinear.Client(self.target, timeout=10, **(client_args or {})) as c:
            assert c.health() == "SERVING"

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def server():
    """One server for the session, batching with a short delay so that
    concurrent calls share batches."""
    s = Server("--max-batch-delay-us", "2000", "--max-batch-rows", "64")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def v2(tmp_path_factory):
    """(messages, services) of KServe's grpc_predict_v2.proto, generated
    here from proto/kserve with protoc and grpc_python_plugin, apart from
    the qlinear package."""
    out = tmp_path_factory.mktemp("kserve_stubs")
    plugin = shutil.which("grpc_python_plugin")
    assert plugin, "grpc_python_plugin (protobuf-compiler-grpc) is needed"
    subprocess.run(["protoc", f"--python_out={out}", f"--grpc_python_out={out}",
                    f"--plugin=protoc-gen-grpc_python={plugin}", "-I", str(ROOT / "proto/kserve"),
                    str(ROOT / "proto/kserve/grpc_predict_v2.proto")], check=True)
    sys.path.insert(0, str(out))
    pb = importlib.import_module("grpc_predict_v2_pb2")
    rpc = importlib.import_module("grpc_predict_v2_pb2_grpc")
    return pb, rpc


@pytest.fixture
def client(server):
    with qlinear.Client(server.target) as c:
        yield c


def golden_files():
    files = sorted(GOLDEN.glob("*.safetensors"))
    assert len(files) == 76, f"{GOLDEN} should hold the 76 MLX-written files; found {len(files)}"
    return files
