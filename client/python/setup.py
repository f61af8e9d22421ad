"""Installs the qlinear package that CMake assembled in BUILD/python: the
sources of client/python/qlinear, the qlinear.v1 stubs generated from
proto/ at build time and the _native module (the C++ checkpoint reader).
Offline, with Debian's setuptools and wheel, into a venv that sees Debian's
grpcio, protobuf and numpy (docs/python.md):

    cmake --build build --target qlinear_python
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation --no-index client/python

QLINEAR_BUILD_DIR names the build folder (default: build/ of the repository).
"""

import os
import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = pathlib.Path(__file__).resolve().parent
BUILD = pathlib.Path(os.environ.get("QLINEAR_BUILD_DIR", HERE.parent.parent / "build")).resolve()
BUILT = BUILD / "python" / "qlinear"
GENERATED = ["v1/qlinear_pb2.py", "v1/qlinear_pb2_grpc.py", "health_pb2.py"]


class BuildPy(build_py):
    """The package's sources, then what CMake generated and built."""

    def run(self):
        natives = sorted(BUILT.glob("_native*.so"))
        missing = [g for g in GENERATED if not (BUILT / g).exists()] + ([] if natives else ["_native*.so"])
        if missing:
            raise SystemExit(f"qlinear: {BUILT} lacks {', '.join(missing)}; build it first with "
                             f"'cmake --build {BUILD} --target qlinear_python' (or set QLINEAR_BUILD_DIR)")
        super().run()
        out = pathlib.Path(self.build_lib) / "qlinear"
        for rel in GENERATED + [n.name for n in natives]:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUILT / rel, out / rel)


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # _native is compiled: a platform wheel
        return True


setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution)
