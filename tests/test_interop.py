"""cnnumpy.interop against code nobody here wrote: torchvision's models (their state dicts
through safetensors, their graphs through torch.onnx.export) and ONNX Runtime (running what
cnnumpy exports); every zoo model through ONNX and back; the errors; the commands.

VGG and AlexNet hold 60 to 130 M weights, most in their classifier: the state-dict tests load
them whole; where a test is about the graph rather than the weights, their classifier is
narrowed (the same layer types and operators, a thousandth of the bytes), as each docstring
says, to keep this file fast.
"""

import copy
import json

import numpy as np
import pytest

import cnnumpy as cn
from architectures import import_torchvision_models, randomize
from cnnumpy.cli import main
from cnnumpy.data import normalize
from cnnumpy.data.idx import write_idx_split
from cnnumpy.init import ZeroDraws
from cnnumpy.interop import (OnnxImportError, from_onnx, from_torch, load_state_file,
                             read_onnx, save_state_file, to_onnx, to_torch)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")
helper = onnx.helper


def relative_error(out: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(out - reference).max() / np.abs(reference).max())


def check_close(out, reference, tolerance):
    """Shape, then dtype, then values (relative to the largest logit)."""
    assert out.shape == reference.shape
    assert out.dtype == reference.dtype
    assert relative_error(out, reference) <= tolerance


def run_onnx_runtime(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def infer(model, x):
    return model.eval()(x, keep_cache=False)


def random_statistics(model, rng) -> None:
    """BatchNorm running statistics away from 0 and 1, so that a mixed-up name shows."""
    for name, buffer in model.buffers().items():
        if name.endswith("running_mean"):
            buffer[...] = rng.standard_normal(buffer.shape) * 0.1
        elif name.endswith("running_var"):
            buffer[...] = rng.uniform(0.5, 1.5, buffer.shape)


# --------------------------------------------------------------------------- torchvision


@pytest.fixture(scope="module")
def torchvision_net():
    """torchvision's model `name` (num_classes 10), seeded random weights and running
    statistics, in eval mode; one per name for the module."""
    torch = pytest.importorskip("torch")
    models = import_torchvision_models()
    made = {}

    def make(name):
        if name not in made:
            torch.manual_seed(0)
            net = getattr(models, name)(num_classes=10).eval()
            generator = torch.Generator().manual_seed(1)
            for key, value in net.state_dict().items():
                if key.endswith("running_mean"):
                    value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
                elif key.endswith("running_var"):
                    value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
                elif key.endswith("num_batches_tracked"):
                    value.fill_(7)
            made[name] = net
        return made[name]

    return make


def torch_logits(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net.to(getattr(torch, str(x.dtype)))(torch.from_numpy(x)).numpy()


# images at 224x224 per model (VGG-11 takes 7.6 G multiply-accumulates for one), and the
# side of the float64 image (PyTorch's float64 convolutions take seconds on VGG at 224)
IMAGES = {"resnet18": (2, 224), "alexnet": (2, 224), "vgg11_bn": (1, 64)}


@pytest.mark.parametrize("name", IMAGES)
def test_torchvision_weights_through_safetensors(name, torchvision_net, tmp_path):
    """torchvision's state dict, written by safetensors' own torch API, read into the zoo:
    the same logits on 224x224 images in float32, and in float64."""
    from safetensors.torch import save_file

    net = torchvision_net(name)
    save_file(net.state_dict(), tmp_path / "weights.safetensors")
    model = getattr(cn.models, name)(num_classes=10, rng=ZeroDraws())
    model.load_state_dict(from_torch(load_state_file(tmp_path / "weights.safetensors"), model))
    rng = np.random.default_rng(0)
    count, float64_side = IMAGES[name]
    x = rng.standard_normal((count, 3, 224, 224)).astype(np.float32)
    check_close(infer(model, x), torch_logits(net, x), 1e-4)
    model.astype(np.float64)
    x64 = rng.standard_normal((1, 3, float64_side, float64_side))
    check_close(infer(model, x64), torch_logits(net, x64), 1e-10)


def narrowed(net, name):
    """torchvision's VGG or AlexNet with its classifier's hidden layers 64 wide (the
    graph's operators unchanged, the file a few megabytes); ResNet-18 as it is."""
    import torch

    if name == "resnet18":
        return net.float()
    net = copy.deepcopy(net).float()
    first, second, last = (i for i, m in enumerate(net.classifier)
                           if isinstance(m, torch.nn.Linear))
    net.classifier[first] = torch.nn.Linear(net.classifier[first].in_features, 64)
    net.classifier[second] = torch.nn.Linear(64, 64)
    net.classifier[last] = torch.nn.Linear(64, 10)
    return net.eval()


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg11_bn"])
def test_torch_onnx_export_imports(name, torchvision_net, tmp_path):
    """torch.onnx.export's graph (BatchNorm folded into Conv, Flatten, Gemm, Identity; VGG's
    and AlexNet's classifiers narrowed) read by cnnumpy: the same logits at 224x224."""
    import torch

    net = narrowed(torchvision_net(name), name)
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), tmp_path / "net.onnx", dynamo=False,
                      input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    model = from_onnx(tmp_path / "net.onnx")
    x = np.random.default_rng(1).standard_normal((IMAGES[name][0], 3, 224, 224))
    check_close(infer(model, x.astype(np.float32)), torch_logits(net, x.astype(np.float32)),
                1e-4)


def test_torch_training_mode_export_is_refused(torchvision_net, tmp_path):
    """AlexNet exported in training mode (its Dropout nodes' training_mode a constant true;
    classifier narrowed) is refused: cnnumpy reads evaluation graphs."""
    import torch

    net = narrowed(torchvision_net("alexnet"), "alexnet")
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), tmp_path / "net.onnx", dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    with pytest.raises(OnnxImportError, match=r"\(Dropout\): its training_mode is not a "
                                              r"constant false"):
        from_onnx(tmp_path / "net.onnx")


def test_to_torch_loads_into_torchvision(torchvision_net):
    """The other way: a cnnumpy ResNet-18's state dict by PyTorch's names loads strictly
    into torchvision's, which then computes cnnumpy's logits."""
    import torch

    rng = np.random.default_rng(2)
    model = cn.models.resnet18(num_classes=10, rng=rng)
    random_statistics(model, rng)
    net = import_torchvision_models().resnet18(num_classes=10).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(model).items()})
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    check_close(torch_logits(net, x), infer(model, x), 1e-4)


# --------------------------------------------------------------------------- the zoo

ZOO = ["resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50", "alexnet",
       "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def narrow_classifier(model) -> None:
    """VGG's or AlexNet's classifier with hidden layers 16 wide: Linear(512·7·7 or
    256·6·6, 16), ReLU, Dropout, Linear(16, 16), ReLU, Dropout, Linear(16, 10). The
    features, where the models differ, stay as the zoo builds them."""
    first = next(layer for layer in model["classifier"].layers.values()
                 if isinstance(layer, cn.Linear))
    model.layers["classifier"] = cn.Sequential([
        cn.Linear(first.in_features, 16), cn.ReLU(), cn.Dropout(),
        cn.Linear(16, 16), cn.ReLU(), cn.Dropout(), cn.Linear(16, 10)])


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_to_onnx_runtime_and_back(name, tmp_path):
    """Every zoo model on 32x32 images (AlexNet: 64x64; their adaptive pooling becomes a
    Resize there; classifiers narrowed) -> ONNX: onnx's checker passes, ONNX Runtime's
    logits are cnnumpy's (float32, relative error <= 1e-5), and from_onnx gives back a
    model with the same parameters and logits."""
    shape = (3, 64, 64) if name == "alexnet" else (3, 32, 32)
    rng = np.random.default_rng(3)
    model = getattr(cn.models, name)(num_classes=10, input_shape=shape, rng=ZeroDraws())
    if name.startswith(("vgg", "alexnet")):
        narrow_classifier(model)
    randomize(model, rng)
    random_statistics(model, rng)
    to_onnx(model, tmp_path / "model.onnx")
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    expected = infer(model, x)
    check_close(run_onnx_runtime(tmp_path / "model.onnx", x), expected, 1e-5)
    back = from_onnx(tmp_path / "model.onnx")
    assert sorted(p.shape for p in back.parameters().values()) == sorted(
        p.shape for p in model.parameters().values())
    check_close(infer(back, x), expected, 1e-6)


def test_batch_axis_is_dynamic_and_metadata_round_trips(tmp_path):
    """The exported input and output have a symbolic first axis: ONNX Runtime runs batches of
    1 and 5 with cnnumpy's logits; the metadata comes back whole (model config, input
    shape, normalisation, class names, data set)."""
    rng = np.random.default_rng(10)
    model = cn.models.resnet20(num_classes=4, input_shape=(1, 8, 8), rng=rng)
    random_statistics(model, rng)
    to_onnx(model, tmp_path / "m.onnx", normalization=([0.3], [0.7]),
            class_names=list("abcd"), dataset="fashion-mnist")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    for value in (graph.input[0], graph.output[0]):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param == "batch" and not first.HasField("dim_value")
    for batch in (1, 5):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        check_close(run_onnx_runtime(tmp_path / "m.onnx", x), infer(model, x), 1e-5)
    read = read_onnx(tmp_path / "m.onnx")
    assert read.metadata == {"input_shape": [1, 8, 8], "model": model.config(),
                             "normalization": {"mean": [0.3], "std": [0.7],
                                               "in_graph": False},
                             "class_names": ["a", "b", "c", "d"], "dataset": "fashion-mnist"}
    assert read.model.input_shape == (1, 8, 8)


def test_external_data_is_read_beside_the_model(tmp_path, monkeypatch):
    """A model saved with its weights in a file of their own loads from another working
    directory (a same-named file there is not read); a location outside the model's folder
    is refused, saying so."""
    rng = np.random.default_rng(11)
    model = cn.models.resnet20(num_classes=3, input_shape=(1, 8, 8), rng=rng)
    to_onnx(model, tmp_path / "m.onnx")
    (tmp_path / "ext").mkdir()
    onnx.save_model(onnx.load(str(tmp_path / "m.onnx")), str(tmp_path / "ext" / "m.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "weights.data").write_bytes(rng.bytes(300_000))
    monkeypatch.chdir(tmp_path / "elsewhere")
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    check_close(infer(from_onnx(tmp_path / "ext" / "m.onnx"), x), infer(model, x), 0)

    proto = onnx.load(str(tmp_path / "ext" / "m.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        next(e for e in tensor.external_data if e.key == "location").value = "../weights.data"
    onnx.save_model(proto, str(tmp_path / "ext" / "up.onnx"))
    with pytest.raises(OnnxImportError, match=r"up.onnx: the weights it keeps in external "
                                              r"data files \(beside it\) cannot be read: "
                                              r".*outside the directory"):
        from_onnx(tmp_path / "ext" / "up.onnx")


def test_imported_resnet_is_a_tree_that_trains_and_saves(tmp_path):
    """ResNet-20 back from ONNX: Residual blocks with torchvision-like names, a summary, a
    training step that changes the weights, and its state dict loads into a fresh import."""
    rng = np.random.default_rng(4)
    model = cn.models.resnet20(num_classes=10, input_shape=(1, 12, 12), rng=rng)
    to_onnx(model, tmp_path / "r.onnx")
    back = from_onnx(tmp_path / "r.onnx")
    blocks = [m for _, m in back.named_modules() if isinstance(m, cn.Residual)]
    assert len(blocks) == 9
    names = set(back.state_dict())
    assert {"block1.conv1.W", "block1.bn2.gamma", "block4.downsample.0.W",
            "block4.downsample.1.running_var", "fc1.W"} <= names
    assert "block4" in back.summary((1, 12, 12))
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)
    back.train()
    logits = back(x)
    before = back.state_dict()["fc1.W"].copy()
    back.backward(rng.standard_normal(logits.shape).astype(np.float32) / logits.size)
    cn.SGD(back, lr=0.1).step()
    assert not np.array_equal(before, back.state_dict()["fc1.W"])
    fresh = from_onnx(tmp_path / "r.onnx")
    fresh.load_state_dict(back.state_dict())
    check_close(infer(fresh, x), infer(back, x), 0)


def test_fold_batchnorm_and_raw_pixels(tmp_path):
    """--fold-batchnorm leaves no BatchNormalization node; --raw-pixels makes the file take
    pixels 0..255, as cnnumpy's model takes normalize(pixels); both within 1e-5. The
    metadata carries the normalisation and class names back, and from_onnx's model (the
    graph after its Mul and Add) fed normalize(pixels) with read_onnx's normalisation gives
    ONNX Runtime's output on the pixels."""
    rng = np.random.default_rng(5)
    model = cn.models.resnet20(num_classes=3, input_shape=(3, 16, 16), rng=rng)
    random_statistics(model, rng)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    to_onnx(model, tmp_path / "m.onnx", fold_batchnorm=True, normalization=(mean, std),
            raw_pixels=True, class_names=["cat", "dog", "eel"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "BatchNormalization" not in ops and {"Conv", "Add", "Mul"} <= ops
    pixels = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    expected = infer(model, normalize(pixels, mean, std))
    check_close(run_onnx_runtime(tmp_path / "m.onnx", pixels.astype(np.float32)), expected,
                1e-5)
    read = read_onnx(tmp_path / "m.onnx")
    np.testing.assert_allclose(read.normalization[0], mean, rtol=1e-6)
    np.testing.assert_allclose(read.normalization[1], std, rtol=1e-6)
    assert read.metadata["class_names"] == ["cat", "dog", "eel"]
    check_close(infer(from_onnx(tmp_path / "m.onnx"), normalize(pixels, *read.normalization)),
                run_onnx_runtime(tmp_path / "m.onnx", pixels.astype(np.float32)), 1e-5)


# --------------------------------------------------------------------------- other spellings


def write_graph(path, nodes, initializers, output_rank=4, input_type=onnx.TensorProto.FLOAT,
                opset=17):
    """An ONNX file of `nodes` (opset `opset`) from input "x" (batch, 1, 6, 6) to output
    "y"."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", input_type, ["n", 1, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                       ["n", *"chw"[:output_rank - 1]])],
        [onnx.numpy_helper.from_array(value.astype(np.float32)
                                      if value.dtype.kind == "f" else value, key)
         for key, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    onnx.save(model, str(path))
    return path


def test_other_tools_spellings_match_onnx_runtime(tmp_path):
    """A graph in spellings cnnumpy never writes: a Constant kernel, a residual join whose
    shortcut is a bare convolution, Pad then AveragePool, Dropout and Identity, a Reshape
    whose shape is computed (Shape, Gather, Unsqueeze, Concat), MatMul + Add, and Gemm
    without transB and with alpha and beta. cnnumpy's model gives ONNX Runtime's output."""
    rng = np.random.default_rng(6)
    w = {"k1": rng.standard_normal((4, 1, 3, 3)), "k2": rng.standard_normal((4, 4, 3, 3)),
         "ks": rng.standard_normal((4, 1, 1, 1)), "m": rng.standard_normal((36, 8)),
         "c": rng.standard_normal(8), "g": rng.standard_normal((8, 5)),
         "gc": rng.standard_normal(5), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
         "zero": np.array([0]), "minus": np.array([-1])}
    kernel = helper.make_node("Constant", [], ["k1c"], value=onnx.numpy_helper.from_array(
        w.pop("k1").astype(np.float32)))
    nodes = [
        kernel,
        helper.make_node("Conv", ["x", "k1c"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "k2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "ks"], ["s"]),
        helper.make_node("Add", ["b", "s"], ["sum"], name="join"),
        helper.make_node("Relu", ["sum"], ["r"]),
        helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant"),
        helper.make_node("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Dropout", ["q"], ["d"]),
        helper.make_node("Identity", ["d"], ["i"]),
        helper.make_node("Shape", ["i"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus"], ["target"], axis=0),
        helper.make_node("Reshape", ["i", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "c"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "g", "gc"], ["y"], alpha=0.5, beta=2.0),
    ]
    path = write_graph(tmp_path / "g.onnx", nodes, w, output_rank=2)
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    model = from_onnx(path)
    assert isinstance(model["block1"], cn.Residual)
    check_close(infer(model, x), run_onnx_runtime(path, x), 1e-5)


def test_dynamo_exporter_spellings_match_onnx_runtime(tmp_path):
    """What torch.onnx.export's dynamo exporter writes for ResNet's head (opset 18+'s
    ReduceMean over H and W keeping them, Reshape with allowzero=1 to (-1, C)), a Reshape's
    shape sliced with axes and steps and squeezed by axes, and nearest Resize in three exact
    modes: cnnumpy's model gives ONNX Runtime's output."""
    rng = np.random.default_rng(12)
    w = {"k": rng.standard_normal((4, 1, 3, 3)), "axes": np.array([-1, -2]),
         "target": np.array([-1, 4]), "g": rng.standard_normal((4, 3)),
         "zero": np.array([0]), "four": np.array([4]), "minus": np.array([-1])}
    resize = [helper.make_node("Resize", ["c", "", "scale2"], ["up1"], mode="nearest",
                               coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor"),
              helper.make_node("Resize", ["up1", "", "scale3"], ["up2"], mode="nearest"),
              helper.make_node("Resize", ["up2", "", "scale2"], ["up3"], mode="nearest",
                               coordinate_transformation_mode="tf_half_pixel_for_nn",
                               nearest_mode="floor")]
    w |= {"scale2": np.array([1.0, 1, 2, 2]), "scale3": np.array([1.0, 1, 3, 3])}
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]), *resize,
             helper.make_node("ReduceMean", ["up3", "axes"], ["mean"], keepdims=1),
             helper.make_node("Reshape", ["mean", "target"], ["flat"], allowzero=1),
             helper.make_node("Shape", ["flat"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "four", "zero", "four"], ["n"]),
             helper.make_node("Squeeze", ["n", "zero"], ["scalar"]),
             helper.make_node("Unsqueeze", ["scalar", "zero"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus"], ["target2"], axis=0),
             helper.make_node("Reshape", ["flat", "target2"], ["flat2"]),
             helper.make_node("Gemm", ["flat2", "g"], ["y"])]
    path = write_graph(tmp_path / "g.onnx", nodes, w, output_rank=2, opset=18)
    model = from_onnx(path)
    assert [type(m).__name__ for m in model.layers.values()] == [
        "Conv2D", "AdaptiveAvgPool2D", "AdaptiveAvgPool2D", "AdaptiveAvgPool2D",
        "GlobalAvgPool2D", "Flatten", "Flatten", "Linear"]
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    check_close(infer(model, x), run_onnx_runtime(path, x), 1e-5)


def test_resize_modes_are_read_when_exact(tmp_path):
    """Nearest Resize by factors 2 and 3 in every coordinate transformation and rounding
    mode: the pairs cnnumpy reads give ONNX Runtime's output, the others are refused."""
    from cnnumpy.interop.onnx_import import EXACT_RESIZE

    x = np.random.default_rng(14).standard_normal((2, 1, 6, 6)).astype(np.float32)
    for mode in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "align_corners",
                 "asymmetric", "tf_half_pixel_for_nn"):
        for rounding in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            for factor in (2, 3):
                path = write_graph(tmp_path / f"{mode}-{rounding}-{factor}.onnx", [
                    helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                     coordinate_transformation_mode=mode,
                                     nearest_mode=rounding)],
                    {"scales": np.array([1.0, 1, factor, factor])}, opset=19)
                if (mode, rounding) in EXACT_RESIZE:
                    check_close(infer(from_onnx(path), x), run_onnx_runtime(path, x), 0)
                else:
                    with pytest.raises(OnnxImportError, match=f"coordinate_transformation_"
                                                              f"mode='{mode}' with nearest_"
                                                              f"mode='{rounding}' is not "
                                                              f"supported"):
                        from_onnx(path)


def test_normalization_prefix_is_returned_apart(tmp_path):
    """Sub and Div by constants at the input (another tool's normalisation) are not in
    from_onnx's model: read_onnx gives them as (mean, std) of normalize, and
    model(normalize(pixels)) is ONNX Runtime's output on pixels / 255."""
    rng = np.random.default_rng(13)
    w = {"mu": np.array([0.4]).reshape(1, 1, 1, 1), "sd": np.array([0.25]).reshape(1, 1, 1, 1),
         "k": rng.standard_normal((2, 1, 3, 3))}
    path = write_graph(tmp_path / "p.onnx", [
        helper.make_node("Sub", ["x", "mu"], ["a"]), helper.make_node("Div", ["a", "sd"], ["b"]),
        helper.make_node("Conv", ["b", "k"], ["y"], pads=[1, 1, 1, 1])], w)
    read = read_onnx(path)
    assert list(read.model.layers) == ["conv1"]
    np.testing.assert_allclose(read.normalization[0], [0.4], rtol=1e-6)
    np.testing.assert_allclose(read.normalization[1], [0.25], rtol=1e-6)
    pixels = rng.integers(0, 256, (2, 1, 6, 6), dtype=np.uint8)
    check_close(infer(from_onnx(path), normalize(pixels, *read.normalization)),
                run_onnx_runtime(path, pixels.astype(np.float32) / 255), 1e-5)


# --------------------------------------------------------------------------- errors


def test_state_dict_mismatches_are_listed_in_one_error():
    model = cn.models.resnet20(num_classes=10, rng=ZeroDraws())
    state = to_torch(model)
    del state["layer1.0.bn1.running_var"]
    state["layer9.weight"] = np.zeros(3)
    state["fc.weight"] = np.zeros((7, 64))
    with pytest.raises(ValueError, match=r"missing \['layer1.0.bn1.running_var'\], "
                                         r"unexpected \['layer9.weight'\], wrong shapes "
                                         r"\(fc.weight: expected \(10, 64\), got \(7, 64\)\)"):
        from_torch(state, model)


def test_state_files_round_trip_and_refuse_corruption(tmp_path):
    model = cn.models.resnet20(num_classes=10, rng=np.random.default_rng(7))
    for suffix in ("safetensors", "npz"):
        path = save_state_file(tmp_path / f"w.{suffix}", to_torch(model))
        back = load_state_file(path)
        assert back.keys() == to_torch(model).keys()
        assert all(np.array_equal(back[k], v) for k, v in to_torch(model).items())
        path.write_bytes(path.read_bytes()[:200])
        with pytest.raises(ValueError, match=f"w.{suffix}: not a readable"):
            load_state_file(path)


def test_unsupported_operator_and_attribute_name_the_node(tmp_path):
    kernel = {"k": np.ones((2, 1, 3, 3))}
    path = write_graph(tmp_path / "s.onnx", [
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv0"),
        helper.make_node("Sigmoid", ["c"], ["y"], name="squash")], kernel)
    with pytest.raises(OnnxImportError, match=r"node 'squash' \(Sigmoid\): operator not "
                                              r"supported; cnnumpy reads .*Conv.*Relu"):
        from_onnx(path)
    path = write_graph(tmp_path / "d.onnx", [
        helper.make_node("Conv", ["x", "k"], ["y"], name="dilated", dilations=[2, 2])], kernel)
    with pytest.raises(OnnxImportError, match=r"node 'dilated' \(Conv\): attribute "
                                              r"dilations=\[2, 2\] is not supported"):
        from_onnx(path)


KERNEL = {"k": np.ones((2, 1, 3, 3))}
SHAPE_OF_X = [helper.make_node("Shape", ["x"], ["shape"])]

# (nodes from "x" (batch, 1, 6, 6) to "y", initialisers, the error's end after "(Op): ")
REFUSED = {
    "average pool not counting its padding": (
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1] * 4,
                          name="n")], {},
        r"pads \[1, 1, 1, 1\] with count_include_pad=0 \(ONNX's default"),
    "ceil_mode": (
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1,
                          name="n")], {},
        r"attribute ceil_mode=1 is not supported \(cnnumpy reads ceil_mode=0\)"),
    "group": ([helper.make_node("Conv", ["x", "k"], ["y"], group=2, name="n")], KERNEL,
              r"attribute group=2 is not supported"),
    "auto_pad": ([helper.make_node("Conv", ["x", "k"], ["y"], auto_pad="SAME_UPPER",
                                   name="n")], KERNEL,
                 r"attribute auto_pad=b'SAME_UPPER' is not supported"),
    "padding a layer refuses": (
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2] * 4,
                          name="n")], {},
        r"padding must be at most half the pool size"),
    "dropout in training mode": (
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"], name="n")],
        {"ratio": np.array(0.5), "training": np.array(True)},
        r"its training_mode is not a constant false"),
    "resize of the channels": (
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                          name="n")], {"scales": np.array([1.0, 2, 2, 2])},
        r"scales \[1.0, 2.0, 2.0, 2.0\] are not 1 on the batch and channel axes"),
    "resize by a fraction": (
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          name="n")], {"scales": np.array([1.0, 1, 2.5, 2.5])},
        r"scales \[1.0, 1.0, 2.5, 2.5\] are not 1 on .* and whole factors on H and W"),
    "resize sizes of a dynamic batch": (
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                          name="n")], {"sizes": np.array([1, 1, 12, 12])},
        r"sizes \[1, 1, 12, 12\] must keep the input's batch \(dynamic: give scales\)"),
    "reshape allowzero with a zero": (
        [helper.make_node("Reshape", ["x", "target"], ["y"], allowzero=1, name="n")],
        {"target": np.array([0, 36])}, r"allowzero=1 with a 0 in the shape \[0, 36\]"),
    "slice of another axis": (
        SHAPE_OF_X + [
            helper.make_node("Slice", ["shape", "zero", "one", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "minus"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"], name="n")],
        {"zero": np.array([0]), "one": np.array([1]), "minus": np.array([-1])},
        r"its shape cannot be evaluated: cnnumpy slices 1-d shapes on axis 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_the_layers_cannot_compute_is_refused(case, tmp_path):
    """Each attribute or input cnnumpy's layers would compute differently from ONNX is one
    error naming the node, its operator and the value."""
    nodes, initializers, problem = REFUSED[case]
    path = write_graph(tmp_path / "r.onnx", nodes, initializers)
    op = nodes[-1].op_type
    with pytest.raises(OnnxImportError, match=rf"r.onnx: node 'n' \({op}\): {problem}"):
        from_onnx(path)


def test_opset_6_dropout_in_training_is_refused(tmp_path):
    path = write_graph(tmp_path / "d.onnx", [helper.make_node("Dropout", ["x"], ["y"],
                                                              is_test=0, name="n")], {}, opset=6)
    with pytest.raises(OnnxImportError, match=r"node 'n' \(Dropout\): its training_mode is "
                                              r"not a constant false"):
        from_onnx(path)


def test_integer_input_is_refused(tmp_path):
    path = write_graph(tmp_path / "i.onnx", [helper.make_node("Relu", ["x"], ["y"])], {},
                       input_type=onnx.TensorProto.INT64)
    with pytest.raises(OnnxImportError, match=r"i.onnx: the input 'x' holds INT64; cnnumpy's "
                                              r"models take FLOAT or DOUBLE images"):
        from_onnx(path)


def test_corrupt_and_truncated_files(tmp_path):
    model = cn.models.resnet20(num_classes=10, rng=ZeroDraws())
    content = to_onnx(model, tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(content[: len(content) // 2])
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(8).bytes(4000))
    for name in ("cut.onnx", "noise.onnx"):
        with pytest.raises(OnnxImportError, match=f"{name}: not a readable ONNX model"):
            from_onnx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such file"):
        from_onnx(tmp_path / "missing.onnx")


def test_export_refuses_what_onnx_cannot_say(tmp_path):
    model = cn.Sequential([cn.AdaptiveAvgPool2D(3), cn.Flatten()])
    with pytest.raises(ValueError, match="AdaptiveAvgPool2D from 5x5 to 3x3 is no ONNX "
                                         "operator"):
        to_onnx(model, tmp_path / "a.onnx", input_shape=(1, 5, 5))
    assert not (tmp_path / "a.onnx").exists()


def test_lone_residual_exports_clean_names(tmp_path):
    """A Residual exported as the model itself: its nodes are named conv, add, relu (no
    leading dot), and it comes back as one block."""
    rng = np.random.default_rng(15)
    block = cn.Residual({"conv": cn.Conv2D(1, 1, 3, padding=1, rng=rng)})
    to_onnx(block, tmp_path / "r.onnx", input_shape=(1, 4, 4))
    names = [node.name for node in onnx.load(str(tmp_path / "r.onnx")).graph.node]
    assert names == ["conv", "add", "relu", "output"]
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    back = from_onnx(tmp_path / "r.onnx")
    assert list(back.layers) == ["block1"]
    check_close(infer(back, x), infer(block, x), 1e-6)


def test_missing_extra_is_named(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'pip install "cnnumpy\[onnx\]"'):
        to_onnx(cn.Sequential([cn.ReLU()]), tmp_path / "r.onnx", input_shape=(1, 2, 2))


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def run(capsys):
    """`cnnumpy ARGS` in this process: (exit status, stdout, stderr)."""
    def command(*args):
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return command


def test_convert_export_and_onnx_files_in_every_command(run, tmp_path, monkeypatch):
    """A state dict in PyTorch's names -> `convert` -> checkpoint -> `export` (raw pixels)
    -> .onnx read by summary, predict (the checkpoint's predictions), evaluate and plot."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(9)
    model = cn.models.resnet20(num_classes=10, input_shape=(1, 28, 28), rng=rng)
    random_statistics(model, rng)
    save_state_file("weights.safetensors", to_torch(model))
    (tmp_path / "names.txt").write_text("\n".join(f"class {k}" for k in range(10)))
    status, out, _ = run("convert", "weights.safetensors", "--model", "resnet20",
                         "--input-shape", "1,28,28", "--out", "r20.npz", "--mean", "0.3",
                         "--std", "0.35", "--class-names", "names.txt")
    assert status == 0 and "r20.npz" in out
    assert run("export", "r20.npz", "--onnx", "r20.onnx", "--raw-pixels")[0] == 0
    status, out, _ = run("summary", "r20.onnx")
    assert status == 0 and "block9" in out and "(10,)" in out

    np.save("images.npy", rng.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8))
    predictions = [json.loads(run("predict", name, "images.npy", "--json")[1])
                   for name in ("r20.npz", "r20.onnx")]
    assert [[t["class"] for t in image["top"]] for image in predictions[0]] == \
        [[t["class"] for t in image["top"]] for image in predictions[1]]
    assert predictions[1][0]["top"][0]["class"].startswith("class ")
    for ours, onnx_file in zip(predictions[0], predictions[1]):
        np.testing.assert_allclose([t["probability"] for t in onnx_file["top"]],
                                   [t["probability"] for t in ours["top"]], rtol=1e-4)

    data = tmp_path / "data"
    labels = rng.integers(0, 10, 12)
    write_idx_split(data / "fashion-mnist", "test",
                    rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), labels)
    metrics = [json.loads(run("evaluate", name, "--dataset", "fashion-mnist", "--data-dir",
                              data, "--json")[1]) for name in ("r20.npz", "r20.onnx")]
    assert metrics[0]["count"] == metrics[1]["count"] == 12
    assert metrics[1]["accuracy"] == metrics[0]["accuracy"]
    assert metrics[1]["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-4)
    status, out, _ = run("plot", "filters", "r20.onnx", "--out", "filters.png")
    assert status == 0 and (tmp_path / "filters.png").stat().st_size > 1000


def test_command_errors_are_one_line_and_keep_files(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = cn.models.resnet20(num_classes=10, rng=ZeroDraws())
    save_state_file("w.npz", to_torch(model))
    status, out, err = run("convert", "w.npz", "--model", "resnet32", "--out", "c.npz")
    assert status == 1 and "Traceback" not in err
    assert err.startswith("cnnumpy: error: the state dict does not fit the model: missing [")
    assert not (tmp_path / "c.npz").exists()
    assert run("convert", "w.npz", "--model", "resnet20", "--out", "c.npz")[0] == 0
    status, _, err = run("convert", "c.npz", "--model", "resnet20", "--out", "d.npz")
    assert status == 1 and "c.npz is a cnnumpy checkpoint already" in err
    save_state_file("W.NPZ", to_torch(model))  # suffixes in any case, as .onnx
    assert run("convert", "W.NPZ", "--model", "resnet20", "--out", "C2.NPZ")[0] == 0
    assert run("summary", "C2.NPZ")[0] == 0
    (tmp_path / "old.onnx").write_bytes(b"keep me")
    status, _, err = run("export", "c.npz", "--onnx", "old.onnx")
    assert status == 1 and "old.onnx exists; pass --force" in err
    assert (tmp_path / "old.onnx").read_bytes() == b"keep me"
    status, _, err = run("summary", "old.onnx")
    assert status == 1 and "old.onnx: not a readable ONNX model" in err
