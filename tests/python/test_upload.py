"""Client.upload(path) through the C++ checkpoint reader (qlinear._native):
a safetensors file (float weights quantized by the server, and a quantized
file with config.json beside it), the three mlx-lm folders with Forward
matching MLX's reference, and the malformed folders of
tests/core/checkpoint_test.cc refused with the reader's own messages before
anything is published."""

import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest

import qlinear
from qlinear import _native
from conftest import BUILD, MLX_LM, ROOT
from test_client import normalised_error, tensor


def names(client):
    return sorted(l.name for l in client.list())


def unload_all_but_demo(client):
    for n in names(client):
        if n != "demo":
            client.unload(n)


def test_upload_of_a_float_safetensors_file(client, tmp_path):
    path = tmp_path / "model.safetensors"
    subprocess.run([sys.executable, str(ROOT / "docs/examples/make_example_model.py"), str(path)], check=True)
    with pytest.warns(UserWarning, match="model.odd.weight.*K=48 is not a multiple of the group size 64"):
        infos = client.upload(path)
    assert [i.name for i in infos] == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.o_proj"]
    up = infos[0]
    assert (up.out_features, up.in_features, up.has_bias, up.weight_dtype) == (64, 128, True, "F16")
    assert up.error_report is not None and up.origin == "upload"
    # The same weight quantized by hand answers the same bits.
    f = _native.open_safetensors(str(path))
    w, _ = tensor(f, "model.layers.0.mlp.up_proj.weight")
    b, _ = tensor(f, "model.layers.0.mlp.up_proj.bias")
    client.quantize("by-hand", w, b)
    x = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float16)
    assert np.array_equal(client.forward("by-hand", x).view(np.uint16),
                          client.forward("model.layers.0.mlp.up_proj", x).view(np.uint16))
    # A second upload without replace is refused on the first layer.
    with pytest.warns(UserWarning):
        with pytest.raises(qlinear.Error) as e:
            client.upload(path)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "stopped after 0 of 2 layers; published: none" in e.value.message
    with pytest.warns(UserWarning):
        assert len(client.upload(path, replace=True)) == 2
    unload_all_but_demo(client)


def check_against_reference(client, fixture, infos):
    ref = _native.open_safetensors(str(MLX_LM / f"{fixture}-reference.safetensors"))
    checked = 0
    for info in infos:
        if info.name + ".x" not in ref.names():
            continue
        x, _ = tensor(ref, info.name + ".x")
        want, _ = tensor(ref, info.name + ".y_f32ref")
        y = client.forward(info.name, x.astype(np.float32), out_dtype="f32")
        assert normalised_error(y.astype(np.float64), want.astype(np.float64)) <= 1e-5, info.name
        checked += 1
    assert checked == 15  # every layer but the embedding has a reference


@pytest.mark.parametrize("fixture", ["tiny-llama-4bit", "tiny-llama-mixed"])
def test_upload_of_an_mlx_lm_folder(client, fixture):
    infos = client.upload(MLX_LM / fixture)
    assert len(infos) == 16
    by_name = {i.name: i for i in infos}
    if fixture == "tiny-llama-mixed":
        v = by_name["model.layers.0.self_attn.v_proj"]
        assert (v.bits, v.group_size) == (6, 32)
        assert by_name["lm_head"].bits == 8
    assert by_name["model.layers.0.self_attn.q_proj"].has_bias
    check_against_reference(client, fixture, infos)
    unload_all_but_demo(client)


def test_upload_of_a_float_folder_and_of_one_file_of_a_folder(client):
    infos = client.upload(MLX_LM / "tiny-llama-float", bits=4, group_size=64)
    assert len(infos) == 16 and all(i.error_report is not None for i in infos)
    unload_all_but_demo(client)
    # One .safetensors file: its triplets' parameters from config.json beside it.
    infos = client.upload(MLX_LM / "tiny-llama-4bit" / "model.safetensors")
    assert len(infos) == 16 and all(i.error_report is None for i in infos)
    check_against_reference(client, "tiny-llama-4bit", infos)
    unload_all_but_demo(client)


# --- malformed folders: the cases of tests/core/checkpoint_test.cc ----------

def copy_fixture(tmp_path, fixture):
    dst = tmp_path / fixture
    shutil.copytree(MLX_LM / fixture, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def edit_json(path, edit):
    j = json.loads(path.read_text())
    edit(j)
    path.write_text(json.dumps(j, indent=4))


def rewrite(path, drop=(), add=()):
    """Rewrites a shard without the tensors `drop`, plus `add`."""
    f = _native.open_safetensors(str(path))
    tensors = [(n, f.tensor(n).dtype, list(f.tensor(n).shape), bytes(memoryview(f.tensor(n))))
               for n in f.names() if n not in drop]
    _native.write_safetensors(str(path), list(add) + tensors, f.metadata)


def index_names_missing_file(d):
    edit_json(d / "model.safetensors.index.json",
              lambda j: j["weight_map"].__setitem__("model.norm.weight", "model-00003-of-00003.safetensors"))
    return ["model.safetensors.index.json", "model.norm.weight", "model-00003-of-00003.safetensors"]


def index_names_missing_tensor(d):
    edit_json(d / "model.safetensors.index.json",
              lambda j: j["weight_map"].__setitem__("model.extra.weight", "model-00001-of-00002.safetensors"))
    return ["model.extra.weight", "model-00001-of-00002.safetensors", "lacks it"]


def index_names_wrong_shard(d):
    edit_json(d / "model.safetensors.index.json",
              lambda j: j["weight_map"].__setitem__("model.norm.weight", "model-00001-of-00002.safetensors"))
    return ["model.norm.weight", "lacks it", "it is in", "model-00002-of-00002.safetensors"]


def index_lacks_a_tensor(d):
    edit_json(d / "model.safetensors.index.json", lambda j: j["weight_map"].pop("model.norm.weight"))
    return ["model.norm.weight", "is not in"]


def tensor_in_two_shards(d):
    norm = np.full(256, 0x3C00, np.uint16)
    rewrite(d / "model-00001-of-00002.safetensors", add=[("model.norm.weight", "F16", [256], norm)])
    return ["'model.norm.weight' is in two files", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"]


LAYER = "model.layers.1.mlp.up_proj"


def weight_without_scales(d):
    rewrite(d / "model.safetensors", drop=[LAYER + ".scales"])
    (d / "model.safetensors.index.json").unlink()
    return ["model.safetensors", LAYER + ".weight", LAYER + ".scales' is missing"]


def scales_without_weight(d):
    rewrite(d / "model.safetensors", drop=[LAYER + ".weight"])
    (d / "model.safetensors.index.json").unlink()
    return ["has no '" + LAYER + ".weight' beside it"]


def scales_do_not_fit_the_override(d):
    edit_json(d / "config.json", lambda j: j["quantization"].__setitem__(
        "model.layers.0.self_attn.v_proj", {"group_size": 64, "bits": 6}))
    return ["model.layers.0.self_attn.v_proj.scales", "[128, 4]", "[128, 8]", "config.json entry"]


def config_is_not_json(d):
    (d / "config.json").write_text('{"quantization": {"bits": 4,')
    return ["config.json", "JSON"]


def a_module_mapped_to_false_has_scales(d):
    edit_json(d / "config.json", lambda j: j["quantization"].__setitem__("model.layers.1.mlp.up_proj", False))
    return ["model.layers.1.mlp.up_proj", "false"]


def quantization_config_names_a_method(d):
    def edit(j):
        j.pop("quantization")
        j["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    edit_json(d / "config.json", edit)
    return ["quant_method", "gptq"]


MALFORMED = [
    ("tiny-llama-mixed", index_names_missing_file),
    ("tiny-llama-mixed", index_names_missing_tensor),
    ("tiny-llama-mixed", index_names_wrong_shard),
    ("tiny-llama-mixed", index_lacks_a_tensor),
    ("tiny-llama-mixed", tensor_in_two_shards),
    ("tiny-llama-4bit", weight_without_scales),
    ("tiny-llama-4bit", scales_without_weight),
    ("tiny-llama-mixed", scales_do_not_fit_the_override),
    ("tiny-llama-4bit", config_is_not_json),
    ("tiny-llama-mixed", a_module_mapped_to_false_has_scales),
    ("tiny-llama-mixed", quantization_config_names_a_method),
]


@pytest.mark.parametrize("fixture,break_it", MALFORMED, ids=[b.__name__ for _, b in MALFORMED])
def test_a_malformed_folder_is_refused_before_any_rpc(server, client, tmp_path, fixture, break_it):
    d = copy_fixture(tmp_path, fixture)
    words = break_it(d)
    before = names(client)
    with pytest.raises(qlinear.Error) as e:
        client.upload(d)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value.message
    for w in words:
        assert w in e.value.message, (w, e.value.message)
    assert names(client) == before, "nothing is published"
    # `qlinear upload` (C++) refuses it with the very same words: one reader.
    cli = subprocess.run([str(BUILD / "qlinear"), "upload", "--in", str(d), "--target", server.target],
                         capture_output=True, text=True)
    assert cli.returncode == 1
    assert f"INVALID_ARGUMENT: {e.value.message}" in cli.stderr, cli.stderr
    assert names(client) == before


def test_three_dimensional_quantized_tensors_are_refused(client, tmp_path):
    codes = np.zeros((2, 8, 8), np.uint32)
    scales = np.full((2, 8, 1), 0x3C00, np.uint16)
    _native.write_safetensors(str(tmp_path / "model.safetensors"),
                              [("experts.weight", "U32", [2, 8, 8], codes),
                               ("experts.scales", "F16", [2, 8, 1], scales),
                               ("experts.biases", "F16", [2, 8, 1], scales)],
                              {"quantization": '{"group_size": 64, "bits": 4}'})
    with pytest.raises(qlinear.Error) as e:
        client.upload(tmp_path)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for w in ("experts.weight", "3-D", "MoE"):
        assert w in e.value.message


def test_missing_paths_and_empty_folders_are_not_found(client, tmp_path):
    with pytest.raises(qlinear.Error) as e:
        client.upload("/nonexistent/qlinear/model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(qlinear.Error) as e:
        client.upload(tmp_path)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "model*.safetensors" in e.value.message


def test_non_finite_values_are_refused_before_the_first_rpc(client, tmp_path):
    w = np.ones((8, 64), np.float32)
    bad = w.copy()
    bad[2, 5] = np.nan
    _native.write_safetensors(str(tmp_path / "m.safetensors"),
                              [("a.weight", "F32", [8, 64], w), ("b.weight", "F32", [8, 64], bad)])
    before = names(client)
    with pytest.raises(qlinear.Error) as e:
        client.upload(tmp_path / "m.safetensors")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "b.weight" in e.value.message and "finite" in e.value.message
    assert names(client) == before  # 'a' was not sent either
