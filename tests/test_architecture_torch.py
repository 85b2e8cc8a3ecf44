"""The layers and models of the classic architectures against PyTorch (skipped without it):
forward, input and parameter gradients, BatchNorm's running statistics, and whole models
(torchvision's own ResNet-18 and VGG layers with our weights copied in) for three SGD steps."""

from collections import OrderedDict

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.init import ZeroDraws
from architectures import import_torchvision_models, randomize, torch_name
from test_torch_reference import check_against_torch

torch = pytest.importorskip("torch")
nn, tF = torch.nn, torch.nn.functional


# ------------------------------------------------------------------ layers


def batchnorm_reference(running_mean, running_var, training, momentum, eps):
    """F.batch_norm with torch's own running statistics tensors (updated in place)."""
    def reference(x, gamma, beta):
        return tF.batch_norm(x, running_mean, running_var, gamma, beta, training=training,
                             momentum=momentum, eps=eps)
    return reference


@pytest.mark.parametrize("cls, shape", [(cn.BatchNorm2D, (4, 3, 5, 6)), (cn.BatchNorm1D, (7, 5))])
def test_batchnorm_training_then_eval(cls, shape, rng, batchnorm_way):
    """Three training-mode calls (momentum 0.3, unbiased running variance), then eval mode."""
    channels, momentum, eps = shape[1], 0.3, 1e-3
    layer = cls(channels, eps=eps, momentum=momentum, dtype=np.float64)
    layer.gamma[...] = rng.uniform(0.5, 2, channels)
    layer.beta[...] = rng.standard_normal(channels)
    mean, var = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 3
        check_against_torch(layer, batchnorm_reference(mean, var, True, momentum, eps), x, rng)
    np.testing.assert_allclose(layer.running_mean, mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, var.numpy(), rtol=1e-13)
    assert layer.num_batches_tracked == 3
    layer.eval()
    x = rng.standard_normal(shape)
    check_against_torch(layer, batchnorm_reference(mean, var, False, momentum, eps), x, rng)
    assert layer.num_batches_tracked == 3


@pytest.mark.parametrize("pool, stride, padding, shape", [
    (3, 2, 1, (2, 3, 7, 6)), (2, 2, 1, (1, 2, 5, 5)), ((3, 2), (2, 1), (1, 1), (2, 2, 6, 5)),
    ((4, 3), (3, 2), (2, 0), (2, 1, 7, 8)),
])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_padded_pools(kind, pool, stride, padding, shape, rng):
    layer = (cn.MaxPool2D if kind == "max" else cn.AvgPool2D)(pool, stride, padding)
    x = rng.standard_normal(shape) - 2  # mostly negative: zero padding would be a maximum
    if kind == "max":
        check_against_torch(layer, lambda x: tF.max_pool2d(x, pool, stride, padding), x, rng)
    else:
        check_against_torch(layer, lambda x: tF.avg_pool2d(x, pool, stride, padding,
                                                           count_include_pad=True), x, rng)


@pytest.mark.parametrize("hw, size", [((6, 6), 3), ((7, 5), (3, 2)), ((5, 9), (4, 7)),
                                      ((3, 2), (5, 4)), ((5, 3), 1)])
def test_adaptive_avgpool(hw, size, rng):
    x = rng.standard_normal((2, 3, *hw))
    check_against_torch(cn.AdaptiveAvgPool2D(size), lambda x: tF.adaptive_avg_pool2d(x, size),
                        x, rng)


def test_global_avgpool_dropout_eval_and_bias_free_conv(rng):
    x = rng.standard_normal((2, 3, 6, 7))
    check_against_torch(cn.GlobalAvgPool2D(), lambda x: tF.adaptive_avg_pool2d(x, 1), x, rng)
    check_against_torch(cn.Dropout(0.4, rng=rng).eval(),
                        lambda x: tF.dropout(x, 0.4, training=False), x, rng)
    layer = cn.Conv2D(3, 4, 3, stride=2, padding=1, rng=rng, dtype=np.float64, bias=False)
    check_against_torch(layer, lambda x, W: tF.conv2d(x, W, None, stride=2, padding=1), x, rng)


def test_residual_block_with_projection_shortcut(rng):
    def bn(c):
        return cn.BatchNorm2D(c, dtype=np.float64)

    def conv(c_in, c_out, k, stride, padding):
        return cn.Conv2D(c_in, c_out, k, stride, padding, rng=rng, dtype=np.float64, bias=False)

    block = cn.Residual({"conv1": conv(3, 4, 3, 2, 1), "bn1": bn(4), "relu1": cn.ReLU(),
                         "conv2": conv(4, 4, 3, 1, 1), "bn2": bn(4)},
                        cn.Sequential([conv(3, 4, 1, 2, 0), bn(4)]))
    for name, param in block.parameters().items():
        param[...] = rng.standard_normal(param.shape)

    def reference(x, **p):
        def norm(h, prefix):
            return tF.batch_norm(h, None, None, p[prefix + ".gamma"], p[prefix + ".beta"],
                                 training=True)
        h = tF.relu(norm(tF.conv2d(x, p["conv1.W"], stride=2, padding=1), "bn1"))
        h = norm(tF.conv2d(h, p["conv2.W"], padding=1), "bn2")
        return tF.relu(h + norm(tF.conv2d(x, p["downsample.0.W"], stride=2), "downsample.1"))

    check_against_torch(block, reference, rng.standard_normal((3, 3, 7, 6)), rng)


# ------------------------------------------------------------------ whole models

def torch_state(model) -> OrderedDict:
    """The model's state dict under PyTorch's names, without Dropout's streams (torch's
    dropout draws from a global generator)."""
    return OrderedDict((torch_name(name), torch.tensor(array))
                       for name, array in model.state_dict().items()
                       if not name.endswith(".rng_state"))


class TorchResidual(nn.Module):
    """The PyTorch twin of a `cn.Residual`: main path, shortcut, sum, activation."""

    def __init__(self, block: cn.Residual):
        super().__init__()
        self.main = [name for name, _ in block.main_path]
        for name, child in block.named_children():
            if name != "add" and child is not None:  # the sum is written in forward
                self.add_module(name, torch_twin(child))

    def forward(self, x):
        out = x
        for name in self.main:
            out = getattr(self, name)(out)
        out = out + (x if getattr(self, "downsample", None) is None else self.downsample(x))
        return self.relu(out) if hasattr(self, "relu") else out


def torch_twin(module):
    """The torch.nn module built mechanically from a cnnumpy module tree: same structure and
    names, torch's own layers (weights are copied in afterwards, by name)."""
    if isinstance(module, cn.Residual):
        return TorchResidual(module)
    if isinstance(module, cn.Sequential):
        return nn.Sequential(OrderedDict((name, torch_twin(child))
                                         for name, child in module.named_children()))
    if isinstance(module, cn.Conv2D):
        return nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, module.padding, bias=module.bias)
    if isinstance(module, cn.BatchNorm2D):
        return nn.BatchNorm2d(module.num_features, module.eps, module.momentum)
    if isinstance(module, cn.Linear):
        return nn.Linear(module.in_features, module.out_features)
    if isinstance(module, cn.GlobalAvgPool2D):
        return nn.AdaptiveAvgPool2d(1)
    simple = {cn.ReLU: nn.ReLU, cn.Flatten: nn.Flatten}
    if type(module) in simple:
        return simple[type(module)]()
    if isinstance(module, cn.AdaptiveAvgPool2D):
        return nn.AdaptiveAvgPool2d(module.output_size)
    if isinstance(module, cn.MaxPool2D):
        return nn.MaxPool2d(module.pool_size, module.stride, module.padding)
    raise TypeError(f"no PyTorch twin for {module!r}")


def train_both(ours, theirs, x, labels, steps=3, lr=0.1, momentum=0.9, tol=1e-9,
               state_tol=None):
    """`steps` SGD steps (cross-entropy) of both models from the same weights; checks the
    logits of every step and in eval mode to `tol` (float64's by default), then the weights
    and buffers, each to `state_tol` (default 10·tol) of its largest magnitude."""
    state_tol = 10 * tol if state_tol is None else state_tol
    # strict: every name must match, both ways; assign: `theirs` may be on the meta device
    theirs.load_state_dict(torch_state(ours), assign=True)
    theirs.train()
    ours.train()
    ours_sgd = cn.SGD(ours, lr=lr, momentum=momentum)
    their_sgd = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=momentum)
    criterion = cn.CrossEntropyLoss()
    for step in range(steps):
        logits = ours.forward(x)
        loss = criterion.forward(logits, labels)
        ours.backward(criterion.backward(), input_grad=False)
        ours_sgd.step()
        their_sgd.zero_grad()
        their_logits = theirs(torch.tensor(x))
        their_loss = tF.cross_entropy(their_logits, torch.tensor(labels))
        their_loss.backward()
        their_sgd.step()
        np.testing.assert_allclose(logits, their_logits.detach().numpy(), rtol=tol, atol=tol,
                                   err_msg=f"logits of step {step}")
        np.testing.assert_allclose(loss, their_loss.item(), rtol=tol, atol=tol)
    their_state = theirs.state_dict()
    for name, array in ours.state_dict().items():
        if name.endswith(".rng_state"):
            continue
        theirs_array = their_state[torch_name(name)].numpy()
        # relative to the array's largest magnitude (one pass: VGG's classifier is 0.5 GB),
        # plus the dtype's resolution (a bias before BatchNorm gets rounding noise only)
        scale = np.abs(array).max(initial=0)
        assert array.shape == theirs_array.shape, name
        worst = np.abs(array - theirs_array).max(initial=0)
        resolution = np.finfo(array.dtype).eps if array.dtype.kind == "f" else 0
        assert worst <= state_tol * scale + resolution, \
            f"{name}: {worst:.3g} off, scale {scale:.3g}"
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(),
                               rtol=10 * tol, atol=tol, err_msg="eval-mode logits")


def batch(rng, shape, n=4, classes=5):
    return rng.standard_normal((n, *shape)), rng.integers(0, classes, n)


def test_resnet_trains_as_torchvisions(rng):
    """torchvision's ResNet class and BasicBlock, one block per stage (ResNet-18 has two; the
    first block of layer1 has the identity shortcut, those of layer2..4 a downsample)."""
    tv = import_torchvision_models()
    ours = cn.models.ResNet("basic", (1, 1, 1, 1), num_classes=5, input_shape=(3, 32, 32),
                            rng=rng, dtype=np.float64)
    theirs = tv.resnet.ResNet(tv.resnet.BasicBlock, [1, 1, 1, 1], num_classes=5).double()
    x, labels = batch(rng, (3, 32, 32))
    train_both(ours, theirs, x, labels)


def test_resnet20_trains_as_its_torch_twin(rng):
    ours = cn.models.resnet20(num_classes=5, input_shape=(2, 12, 12), rng=rng, dtype=np.float64)
    x, labels = batch(rng, (2, 12, 12), n=6)
    train_both(ours, torch_twin(ours).double(), x, labels)


def test_whole_vgg11_bn_trains_as_torchvisions():
    """torchvision's own VGG-11 with BatchNorm, classifier included (its AdaptiveAvgPool2d(7)
    repeats a 32x32 input's 1x1 map into 25,088 features), from cnnumpy's initialisation
    (torchvision's), in float32: 0.5 G of weights in float64 would dominate the suite (the
    next test checks the features in float64); even so the two models' weights, gradients
    and momentum take about 3 GB. Dropout at 0: the two libraries draw different masks.
    Logits agree to 1e-4 (seeds 1, 2 and 1234: within 1e-5); weights and buffers to 1e-3 of
    each one's largest magnitude (seeds 1 and 2: within 7e-6). Not seed 1234: there the β
    of features.9, whose gradient is a float32 sum over 512 values, ends 3% of its size
    apart (the next worst array 1.2e-3), though the logits agree to 1e-5."""
    rng = np.random.default_rng(1)
    tv = import_torchvision_models()
    ours = cn.models.vgg11_bn(num_classes=5, input_shape=(3, 32, 32), dropout=0.0, rng=rng)
    with torch.device("meta"):  # no memory, no initialisation: the weights come from ours
        theirs = tv.vgg11_bn(num_classes=5, dropout=0.0)
    x, labels = batch(rng, (3, 32, 32), n=8)
    train_both(ours, theirs, x.astype(np.float32), labels, lr=0.01, tol=1e-4, state_tol=1e-3)


def test_vgg11_bn_features_train_as_torchvisions(rng):
    """torchvision's own `make_layers` for VGG-11 with BatchNorm (the classifier of 4096-wide
    Linear, ReLU and Dropout layers is tested layer by layer; 0.5 G of weights in float64
    would dominate the suite), then a global pool and a small linear head, at 32x32."""
    tv = import_torchvision_models()
    features = cn.models.vgg11_bn(input_shape=(3, 32, 32), rng=ZeroDraws())["features"]
    features.astype(np.float64)
    randomize(features, rng)
    head = cn.Linear(512, 5, rng=rng, dtype=np.float64, init="uniform")
    ours = cn.Sequential({"features": features, "pool": cn.GlobalAvgPool2D(),
                          "flatten": cn.Flatten(), "head": head})
    theirs = nn.Sequential(OrderedDict(
        features=tv.vgg.make_layers(tv.vgg.cfgs["A"], batch_norm=True),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(512, 5))).double()
    x, labels = batch(rng, (3, 32, 32), n=2)
    train_both(ours, theirs, x, labels)
