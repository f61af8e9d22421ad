"""qlinear: a Python client for qlinear-server (docs/python.md).

    import numpy as np, qlinear
    with qlinear.Client("127.0.0.1:50051") as client:
        y = client.forward("demo", np.ones((2, 4096), np.float32))

Client (blocking) and AsyncClient (grpc.aio) speak qlinear.v1; failures raise
qlinear.Error with .code (a grpc.StatusCode) and .message.
"""

from qlinear._common import Error, ForwardInfo, LayerInfo
from qlinear.aio import AsyncClient, AsyncLayer
from qlinear.client import Client, Layer

for _public in (Error, ForwardInfo, LayerInfo, AsyncClient, AsyncLayer, Client, Layer):
    _public.__module__ = "qlinear"  # shown as qlinear.Error, not qlinear._common.Error

__all__ = ["AsyncClient", "AsyncLayer", "Client", "Error", "ForwardInfo", "Layer", "LayerInfo"]
__version__ = "0.1.0"
