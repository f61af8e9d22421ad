#!/usr/bin/env python3
"""Writes the small float model used by the examples in README.md and docs/api.md.

Usage: python3 docs/examples/make_example_model.py model.safetensors

Standard library only. The weights are seeded Gaussians (random.Random(0)),
so the file is the same on every run with the same Python (the examples were
captured with Python 3.11.7).

Tensors:
  model.layers.0.mlp.up_proj.weight       F16 [64, 128]  quantized
  model.layers.0.mlp.up_proj.bias         F16 [64]       copied
  model.layers.0.self_attn.o_proj.weight  F32 [32, 64]   quantized
  model.norm.weight                       F32 [64]       copied (1-D)
  model.odd.weight                        F32 [8, 48]    copied with a warning
                                                         (K=48 is no multiple
                                                         of 32 or 64)
  position_ids                            I64 [8]        copied
"""
import json
import random
import struct
import sys


def tensor(dtype, shape, values):
    fmt = {"F32": "<f", "F16": "<e", "I64": "<q"}[dtype]
    return dtype, shape, b"".join(struct.pack(fmt, v) for v in values)


rng = random.Random(0)


def gauss(n, std):
    return [rng.gauss(0.0, std) for _ in range(n)]


tensors = {
    "model.layers.0.mlp.up_proj.weight": tensor("F16", [64, 128], gauss(64 * 128, 0.05)),
    "model.layers.0.mlp.up_proj.bias": tensor("F16", [64], gauss(64, 0.05)),
    "model.layers.0.self_attn.o_proj.weight": tensor("F32", [32, 64], gauss(32 * 64, 0.05)),
    "model.norm.weight": tensor("F32", [64], [1.0] * 64),
    "model.odd.weight": tensor("F32", [8, 48], gauss(8 * 48, 0.05)),
    "position_ids": tensor("I64", [8], list(range(8))),
}
header, data, off = {"__metadata__": {"origin": "docs example"}}, b"", 0
for name, (dtype, shape, raw) in tensors.items():
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
    data += raw
    off += len(raw)
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)  # 8-byte aligned data section
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + data)
