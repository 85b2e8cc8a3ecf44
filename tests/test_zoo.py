"""The zoo against torchvision's published figures (parameters, multiply-accumulates at
3x224x224), torchvision's module names and shapes, the CIFAR ResNets' sizes, config round
trips and input-size errors."""

import functools

import pytest

import cnnumpy as cn
from cnnumpy.init import ZeroDraws
from architectures import import_torchvision_models, torch_name
from cnnumpy.summary import summarize

# torchvision's weight metadata ("num_params", and "_ops": GMACs at 3x224x224, 3 decimals)
PUBLISHED = {
    "alexnet": (61_100_840, 0.714),
    "vgg11": (132_863_336, 7.609), "vgg11_bn": (132_868_840, 7.609),
    "vgg13": (133_047_848, 11.308), "vgg13_bn": (133_053_736, 11.308),
    "vgg16": (138_357_544, 15.47), "vgg16_bn": (138_365_992, 15.47),
    "vgg19": (143_667_240, 19.632), "vgg19_bn": (143_678_248, 19.632),
    "resnet18": (11_689_512, 1.814), "resnet34": (21_797_672, 3.664),
    "resnet50": (25_557_032, 4.089),
}
# A summary runs the model once at 224x224 (a few seconds for a VGG): the MACs of these, every
# depth of each family; a VGG's _bn variant adds BatchNorm, which has no multiply-accumulates.
SUMMARIZED = ("alexnet", "vgg11", "vgg13", "vgg16_bn", "vgg19_bn", "resnet18", "resnet34",
              "resnet50")


@functools.lru_cache(maxsize=None)
def zoo_facts(name: str) -> tuple[int, int | None, dict]:
    """(parameters, MACs at 3x224x224 or None, {state-dict name: shape}) of a zoo model,
    built once (with zero weights: only shapes matter here)."""
    model = getattr(cn.models, name)(rng=ZeroDraws())
    shapes = {key: array.shape for key, array in model.state_dict().items()}
    macs = summarize(model, (3, 224, 224)).macs if name in SUMMARIZED else None
    return model.num_parameters(), macs, shapes


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_and_macs_are_torchvisions_published_figures(name):
    parameters, macs, _ = zoo_facts(name)
    published_parameters, published_gmacs = PUBLISHED[name]
    assert parameters == published_parameters
    if macs is not None:
        assert round(macs / 1e9, 3) == published_gmacs


def torchvision_facts(name: str) -> tuple[int, int, dict]:
    """(parameters, exact MACs at 3x224x224, {state-dict name: shape}) of torchvision's own
    model, on the meta device (shapes, no memory): MACs by forward hooks, C_out·H_out·W_out ·
    C_in/groups·kH·kW per convolution and in·out per linear layer."""
    torch = pytest.importorskip("torch")
    tv = import_torchvision_models()
    with torch.device("meta"):
        model = getattr(tv, name)()
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs.append(output[0].numel() * module.in_channels // module.groups * kh * kw)
        else:
            macs.append(module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(count)
    model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    return sum(p.numel() for p in model.parameters()), sum(macs), shapes


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_names_shapes_and_exact_macs_are_torchvisions(name):
    """Every state-dict entry maps to torchvision's by W -> weight, b -> bias, gamma -> weight,
    beta -> bias (buffers keep their names), with the same shape, and nothing is left over
    but the random streams of the Dropout layers (torch's dropout draws from a global one)."""
    parameters, macs, shapes = zoo_facts(name)
    their_parameters, their_macs, their_shapes = torchvision_facts(name)
    streams = {key for key in shapes if key.endswith(".rng_state")}  # Dropout's own buffer
    assert streams == {f"classifier.{i}.rng_state" for i in
                       ((0, 3) if name == "alexnet" else (2, 5) if "vgg" in name else ())}
    assert {torch_name(key): shape for key, shape in shapes.items()
            if key not in streams} == their_shapes
    assert parameters == their_parameters
    if macs is not None:
        assert macs == their_macs


def cifar_resnet_parameters(depth, channels=1, classes=10, width=16):
    """Counted from the paper's description: a 3x3 convolution to `width` maps, three stages
    of n = (depth - 2) / 6 basic blocks (two bias-free 3x3 convolutions, each with BatchNorm's
    γ and β) of width, 2·width, 4·width, a 1x1 convolution + BatchNorm shortcut where the
    width doubles, then the linear classifier."""
    n = (depth - 2) // 6
    total = channels * width * 9 + 2 * width
    c_in = width
    for w in (width, 2 * width, 4 * width):
        for block in range(n):
            total += c_in * w * 9 + w * w * 9 + 4 * w
            if c_in != w:
                total += c_in * w + 2 * w
            c_in = w
    return total + c_in * classes + classes


def cifar_resnet_macs(depth, channels=3, side=32, classes=10, width=16):
    """Multiply-accumulates at channels x side x side, counted as `cifar_resnet_parameters`:
    each convolution's weights times its output pixels (side, side/2, side/4 by stage)."""
    n = (depth - 2) // 6
    total = channels * width * 9 * side ** 2
    c_in = width
    for stage, w in enumerate((width, 2 * width, 4 * width)):
        pixels = (side // 2 ** stage) ** 2
        for block in range(n):
            total += (c_in * w * 9 + w * w * 9 + (c_in * w if c_in != w else 0)) * pixels
            c_in = w
    return total + c_in * classes


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_cifar_resnets_macs(depth):
    """Whole models at 3x32x32 against the count by hand."""
    model = getattr(cn.models, f"resnet{depth}")(input_shape=(3, 32, 32), rng=ZeroDraws())
    assert summarize(model, (3, 32, 32)).macs == cifar_resnet_macs(depth)


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (32, 0.46), (56, 0.85)])
def test_cifar_resnets(depth, millions):
    """He et al.'s 0.27 M / 0.46 M / 0.85 M; ResNet-20 at 1x28x28 with 10 classes has 272,186
    (issue 10's figure, as PyTorch counts the same architecture)."""
    model = getattr(cn.models, f"resnet{depth}")(input_shape=(1, 28, 28), rng=ZeroDraws())
    assert model.num_parameters() == cifar_resnet_parameters(depth)
    assert abs(model.num_parameters() / 1e6 - millions) < 0.01  # option A has no shortcut weights
    modules = dict(model.named_modules())
    blocks = [name for name, module in modules.items() if isinstance(module, cn.Residual)]
    assert len(blocks) == 3 * ((depth - 2) // 6)
    assert [name for name in blocks if modules[name].downsample is not None] == \
        ["layer2.0", "layer3.0"]
    assert model.output_shape((1, 28, 28)) == (10,)


def test_resnet20_parameters_are_the_issues_figure():
    assert cifar_resnet_parameters(20) == 272_186


@pytest.mark.parametrize("config", [
    {"name": "AlexNet", "num_classes": 7, "input_shape": [1, 64, 70], "dropout": 0.25},
    {"name": "AlexNet", "num_classes": 7, "input_shape": [1, 28, 28], "dropout": 0.5,
     "input_padding": 18},
    {"name": "VGG", "depth": 13, "batch_norm": True, "num_classes": 3,
     "input_shape": [2, 32, 32], "dropout": 0.1},
    {"name": "VGG", "depth": 11, "batch_norm": False, "num_classes": 3,
     "input_shape": [1, 28, 28], "dropout": 0.5, "input_padding": 2},
    {"name": "ResNet", "block": "bottleneck", "layers": [1, 2, 1, 1], "num_classes": 4,
     "input_shape": [3, 40, 40]},
    {"name": "CifarResNet", "depth": 14, "width": 8, "num_classes": 6,
     "input_shape": [1, 20, 24]},
])
def test_config_round_trips_through_build_model(config):
    model = cn.build_model(config, rng=ZeroDraws())
    assert {key: model.config()[key] for key in config} == config
    again = cn.build_model(model.config(), rng=ZeroDraws())
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert again.config() == model.config()
    assert again.output_shape(tuple(config["input_shape"])) == (config["num_classes"],)


def test_builders_save_their_class_config():
    model = cn.models.resnet32(input_shape=(1, 28, 28), rng=ZeroDraws())
    config = model.config()
    assert {key: config[key] for key in ("name", "depth", "width", "num_classes",
                                         "input_shape")} == \
        {"name": "CifarResNet", "depth": 32, "width": 16, "num_classes": 10,
         "input_shape": [1, 28, 28]}
    assert cn.build_model({"name": "resnet32", "input_shape": [1, 28, 28]},
                          rng=ZeroDraws()).config() == model.config()


@pytest.mark.parametrize("build, message", [
    (lambda: cn.models.alexnet(input_shape=(3, 62, 62), rng=ZeroDraws()), r"AlexNet needs images of at least 63x63 pixels, got input_shape \(3, 62, 62\)"),
    (lambda: cn.models.vgg11(input_shape=(3, 31, 31), rng=ZeroDraws()), r"VGG needs images of at least 32x32"),
    (lambda: cn.models.resnet18(input_shape=(3, 224)), r"input_shape must be \(C, H, W\)"),
    (lambda: cn.models.resnet20(num_classes=0), r"num_classes must be a positive integer"),
    (lambda: cn.models.CifarResNet(depth=21), r"depth must be 6n \+ 2"),
    (lambda: cn.build_model({"name": "resnet20", "blocks": 3}), r"bad arguments for model 'resnet20'.*blocks"),
    (lambda: cn.build_model({"name": "resnet21"}), r"unknown model 'resnet21'"),
])
def test_bad_arguments_name_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build()
