"""Sequential and SimpleCNN: shapes, dtypes, parameter walking, modes, exact gradients."""

import numpy as np
import pytest

import cnnumpy as cn


@pytest.mark.parametrize("input_shape, flat", [((3, 32, 32), 64 * 8 * 8), ((1, 28, 28), 64 * 7 * 7),
                                               ((2, 9, 13), 64 * 2 * 3)])
def test_simplecnn_flatten_size_is_computed(input_shape, flat):
    model = cn.SimpleCNN(input_shape, num_classes=5, rng=np.random.default_rng(0))
    assert model["fc1"].W.shape == (512, flat)
    assert model.output_shape(input_shape) == (5,)


def test_simplecnn_float32_end_to_end():
    model = cn.SimpleCNN(input_shape=(1, 28, 28), num_classes=10, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((8, 1, 28, 28)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (8, 10) and logits.dtype == np.float32
    dx = model.backward(np.ones_like(logits) / 8)
    assert dx.shape == (8, 1, 28, 28) and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.gradients().values())


def test_simplecnn_layers_and_parameter_names():
    model = cn.SimpleCNN(rng=np.random.default_rng(0))
    assert [name for name, _ in model.named_layers()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    shapes = {name: p.shape for name, p in model.parameters().items()}
    assert shapes == {"conv1.W": (32, 3, 3, 3), "conv1.b": (32,), "conv2.W": (64, 32, 3, 3),
                      "conv2.b": (64,), "fc1.W": (512, 4096), "fc1.b": (512,),
                      "fc2.W": (10, 512), "fc2.b": (10,)}
    assert list(model.gradients()) == list(model.parameters())
    assert model.num_parameters() == 896 + 18496 + 2097664 + 5130


def test_simplecnn_gradients_exact():
    rng = np.random.default_rng(0)
    model = cn.SimpleCNN((2, 6, 5), num_classes=3, rng=rng)
    x = rng.standard_normal((2, 2, 6, 5))
    # 300 random entries of each array (fc1.W alone has 32768); every input and bias
    assert cn.gradient_check(model, x, samples=300, rng=rng) < 1e-6


@pytest.mark.parametrize("first", ["conv", "relu", "linear"])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(first):
    rng = np.random.default_rng(0)
    conv = cn.Conv2D(2, 3, 3, padding=1, rng=rng, dtype=np.float64)
    fc = cn.Linear(3 * 5 * 4, 4, rng=rng, dtype=np.float64)
    layers = {"conv": [conv, cn.ReLU(), cn.Flatten(), fc],
              "relu": [cn.ReLU(), conv, cn.Flatten(), fc], "linear": [fc]}[first]
    model = cn.Sequential(layers)
    x = rng.standard_normal((3, 60) if first == "linear" else (3, 2, 5, 4))
    dout = rng.standard_normal((3, 4))
    model.forward(x)
    dx = model.backward(dout)
    assert dx.shape == x.shape
    with_input = {name: grad.copy() for name, grad in model.gradients().items()}
    model.zero_grad()
    model.forward(x)
    assert model.backward(dout, input_grad=False) is None
    without_input = model.gradients()
    assert list(without_input) == list(with_input)
    for name, grad in with_input.items():
        np.testing.assert_array_equal(without_input[name], grad, err_msg=name)


def test_simplecnn_init_reaches_every_layer():
    model = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0), init="uniform")
    he = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0))
    assert model.config() == he.config()  # the architecture; its checkpoints load into either
    for name, layer in model.named_layers():
        if layer.param_names:
            assert layer.b.any(), name  # uniform draws the biases too; He leaves them at 0
    assert not he["fc1"].b.any()


def test_parameters_are_live_and_loadable():
    model = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0))
    params = model.parameters()
    params["fc2.b"] += 1.0  # in-place update through the dict changes the model
    assert np.all(model["fc2"].b == 1.0)
    other = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(5))
    other.load_parameters({k: v.copy() for k, v in params.items()})
    x = np.random.default_rng(2).random((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    with pytest.raises(ValueError, match=r"missing \['fc2.b'\]"):
        other.load_parameters({k: v for k, v in params.items() if k != "fc2.b"})
    with pytest.raises(ValueError, match=r"wrong shapes \(fc2.W: expected \(3, 512\), got \(4, 512\)\)"):
        other.load_parameters({**params, "fc2.W": np.zeros((4, 512))})


def test_zero_grad_train_eval_astype():
    model = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0))
    model.forward(np.ones((2, 1, 8, 8), np.float32))
    model.backward(np.ones((2, 3), np.float32))
    assert any(g.any() for g in model.gradients().values())
    model.zero_grad()
    assert not any(g.any() for g in model.gradients().values())
    assert model.eval() is model and not model.training
    assert not any(layer.training for _, layer in model.named_layers())
    model.train()
    assert all(layer.training for _, layer in model.named_layers())
    assert model.astype(np.float64).dtype == np.float64
    assert all(g.dtype == np.float64 for g in model.gradients().values())


def test_model_input_errors():
    model = cn.SimpleCNN((3, 32, 32), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Conv2D expected 3 input channels, got 1 \(input shape \(8, 1, 28, 28\)\)"):
        model.forward(np.zeros((8, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.forward(np.full((1, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"at least 4x4 pixels, got input_shape \(1, 3, 3\)"):
        cn.SimpleCNN((1, 3, 3))
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        cn.SimpleCNN((28, 28))
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        cn.SimpleCNN(num_classes=0)
    with pytest.raises(TypeError, match="is not a cnnumpy module"):
        cn.Sequential([cn.ReLU(), "relu"])


def test_same_generator_same_weights():
    a = cn.SimpleCNN(rng=np.random.default_rng(7))
    b = cn.SimpleCNN(rng=np.random.default_rng(7))
    for (name, p), q in zip(a.parameters().items(), b.parameters().values()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_inference_forward_gives_the_training_logits_and_no_cache():
    model = cn.SimpleCNN(input_shape=(3, 16, 16), num_classes=4, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((5, 3, 16, 16)).astype(np.float32)
    logits = model.forward(x)
    np.testing.assert_array_equal(model.forward(x, keep_cache=False), logits)
    assert all(layer.cache is None for _, layer in model.named_layers())
    with pytest.raises(RuntimeError, match="keep_cache=False"):
        model.backward(np.ones_like(logits))


@pytest.mark.parametrize("pool", [cn.MaxPool2D(2), cn.MaxPool2D(3, stride=2)])
def test_pooling_before_relu_gives_exactly_the_written_order(pool):
    """Sequential runs ReLU -> MaxPool2D as MaxPool2D -> ReLU: same output, same gradients,
    also where whole windows are negative or tie at zero after the ReLU."""
    rng = np.random.default_rng(0)
    conv = cn.Conv2D(2, 3, 3, padding=1, rng=rng, dtype=np.float64)
    model = cn.Sequential({"conv": conv, "relu": cn.ReLU(), "pool": pool, "flat": cn.Flatten()})
    x = rng.standard_normal((4, 2, 9, 9))
    x[0] = 0  # conv output = bias only: ties inside every window
    x[1, :, :5, :5] = -5.0
    results = {}
    for commute in (True, False):
        model.commute_relu_pool = commute
        out = model.forward(x)
        dout = rng.standard_normal(out.shape) if commute else results[True][3]
        dx = model.backward(dout)
        results[commute] = (out, dx, conv.dW.copy(), dout)
        executed = [type(layer).__name__ for layer in model._executed]
        assert executed.index("ReLU") > executed.index(type(pool).__name__) if commute \
            else executed.index("ReLU") < executed.index(type(pool).__name__)
    for a, b in zip(results[True][:3], results[False][:3]):
        np.testing.assert_array_equal(a, b)


def test_modules_written_without_keep_cache_still_train_in_a_sequential():
    class Double(cn.Module):
        def forward(self, x):
            return 2 * x

        def named_layers(self, prefix=""):
            return iter(())

        def output_shape(self, input_shape):
            return input_shape

    model = cn.Sequential([Double(), cn.ReLU()])
    x = np.array([[-1.0, 2.0]])
    np.testing.assert_array_equal(model(x), [[0.0, 4.0]])


def test_fold_batchnorm_gives_the_eval_outputs():
    rng = np.random.default_rng(0)
    model = cn.models.resnet20(input_shape=(1, 12, 12), num_classes=4, rng=rng,
                               dtype=np.float64)
    x = rng.standard_normal((6, 1, 12, 12))
    for _ in range(3):  # running statistics away from their initial 0 and 1
        model.forward(x + rng.standard_normal(x.shape))
    for name, param in model.parameters().items():
        if name.endswith(("gamma", "beta")):
            param[...] = rng.uniform(0.5, 1.5, param.shape)
    folded = cn.models.fold_batchnorm(model)
    model.eval()
    np.testing.assert_allclose(folded.forward(x), model.forward(x), rtol=1e-10, atol=1e-12)
    kinds = [type(m).__name__ for _, m in folded.named_layers()]
    assert "BatchNorm2D" not in kinds and kinds.count("Identity") == 21
    assert sum(isinstance(m, cn.BatchNorm2D) for m in model.modules()) == 21  # left as it was


def test_inference_folds_each_batchnorm_into_its_convolution(monkeypatch):
    """forward(x, keep_cache=False) in evaluation mode runs every Conv2D -> BatchNorm2D pair
    as one convolution with the BatchNorm folded in, and the ReLU after it: the outputs of
    the layers run in turn (float64, up to rounding), in a residual network's blocks and
    downsample shortcuts, in a VGG's Sequential and in the copy `fold_batchnorm` makes (an
    Identity where each BatchNorm was). Not in training mode, and not while a trace records
    (it sees every module's own output)."""
    from cnnumpy import functional as F
    from cnnumpy import trace

    rng = np.random.default_rng(5)
    calls, relus = [], []
    infer = F.batchnorm_infer
    monkeypatch.setattr(F, "batchnorm_infer", lambda *args: calls.append(1) or infer(*args))
    relu_forward = cn.ReLU.forward
    monkeypatch.setattr(cn.ReLU, "forward",
                        lambda self, *args, **kw: relus.append(1) or relu_forward(self, *args, **kw))
    resnet = cn.models.resnet20(input_shape=(3, 32, 32), num_classes=4, rng=rng,
                                dtype=np.float64)
    vgg = cn.models.vgg11_bn(num_classes=4, rng=rng, dtype=np.float64)
    x = rng.standard_normal((16, 3, 32, 32))
    # VGG's last six convolutions (8x8 and less) have more weights than outputs per channel,
    # and keep their BatchNorm apart (see the next test)
    for model, computed in ((resnet, 0), (vgg, 6)):
        model.forward(x)  # running statistics away from their initial 0 and 1
        for name, param in model.parameters().items():
            if name.endswith(("gamma", "beta")):
                param[...] = rng.uniform(0.5, 1.5, param.shape)
        model.eval()
        expected = model.forward(x)  # keep_cache=True: every layer as written
        calls.clear()
        relus.clear()
        np.testing.assert_allclose(model.forward(x, keep_cache=False), expected,
                                   rtol=1e-10, atol=1e-12)
        assert len(calls) == computed
        if model is resnet:  # each ReLU runs in the convolution before it, or over its
            assert relus == []  # block's sum in place
    folded = cn.models.fold_batchnorm(resnet)  # Identity where each BatchNorm was
    expected = resnet.forward(x)
    relus.clear()
    np.testing.assert_allclose(folded.forward(x, keep_cache=False), expected,
                               rtol=1e-10, atol=1e-12)
    assert relus == []  # Conv2D -> Identity -> ReLU runs as one convolution too
    recorded = trace.record(resnet, x)
    bn = dict(resnet.named_modules())["layer1.0.bn1"]
    call = recorded.call("layer1.0.bn1")
    np.testing.assert_array_equal(call.output, infer(call.inputs[0], bn.gamma, bn.beta,
                                                     bn.running_mean, bn.running_var, bn.eps))
    resnet.train()
    training = resnet.forward(x, keep_cache=False)  # batch statistics: BatchNorm runs
    assert not np.allclose(training, expected)


def test_inference_folds_a_batchnorm_only_where_the_outputs_outnumber_the_weights(monkeypatch):
    """Folding is a pass over the weights: a convolution folds its BatchNorm only when each
    output channel has more outputs (N·H_out·W_out) than weights (C_in·kH·kW), here 72."""
    from cnnumpy import functional as F

    rng = np.random.default_rng(6)
    calls = []
    infer = F.batchnorm_infer
    monkeypatch.setattr(F, "batchnorm_infer", lambda *args: calls.append(1) or infer(*args))
    model = cn.Sequential([cn.Conv2D(8, 4, 3, padding=1, rng=rng, dtype=np.float64),
                           cn.BatchNorm2D(4, dtype=np.float64)]).eval()
    model[1].running_var[...] = rng.uniform(0.5, 2, 4)
    for images, size, computed in ((1, 8, 1), (2, 6, 1), (1, 9, 0), (18, 2, 1), (19, 2, 0)):
        x = rng.standard_normal((images, 8, size, size))
        calls.clear()
        np.testing.assert_allclose(model.forward(x, keep_cache=False), model.forward(x),
                                   rtol=1e-12, atol=1e-12)
        assert len(calls) == 1 + computed  # the forward with caches computes it too


def test_inference_runs_a_relu_after_a_convolution_in_it(monkeypatch):
    """Without BatchNorm, a Conv2D -> ReLU pair runs as one convolution for inference too:
    exactly the two layers' outputs, whichever way the convolution goes (kernel rows, where
    the ReLU goes chunk by chunk, or im2col with a stride of 2). A ReLU before max-pooling
    runs after it (`commute_relu_pool`), so that one is not taken in."""
    rng = np.random.default_rng(7)
    relus = []
    relu_forward = cn.ReLU.forward
    monkeypatch.setattr(cn.ReLU, "forward",
                        lambda self, *args, **kw: relus.append(1) or relu_forward(self, *args, **kw))
    model = cn.Sequential([cn.Conv2D(3, 8, 3, padding=1, rng=rng), cn.ReLU(),
                           cn.Conv2D(8, 8, 3, stride=2, padding=1, rng=rng), cn.ReLU(),
                           cn.Conv2D(8, 8, 3, padding=1, rng=rng), cn.ReLU(), cn.MaxPool2D(2)])
    x = rng.standard_normal((5, 3, 12, 12)).astype(np.float32)
    expected = model.forward(x)
    relus.clear()
    np.testing.assert_array_equal(model.forward(x, keep_cache=False), expected)
    assert len(relus) == 1  # the last, after the pooling


def test_fused_inference_keeps_inputs_and_errors_and_clears_caches():
    """Inference that fuses (a convolution with its BatchNorm and ReLU, a residual block's sum
    and ReLU in place) leaves its input as it was, adds in place only over an array the
    block made (not over an Identity's, which is its input), clears the caches of the modules
    it runs inside others (their backward then says so), and meets bad input with the errors
    the layers give one by one."""
    rng = np.random.default_rng(8)
    model = cn.models.resnet20(input_shape=(3, 16, 16), num_classes=4, rng=rng)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    model.forward(x)  # caches everywhere, from a training pass
    model.eval()
    kept = x.copy()
    expected = model.forward(x)
    np.testing.assert_allclose(model.forward(x, keep_cache=False), expected, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(x, kept)
    modules = dict(model.named_modules())
    for name in ("bn1", "relu", "layer1.0.bn1", "layer1.0.relu"):
        assert modules[name].cache is None, name
    with pytest.raises(RuntimeError, match="before forward"):
        modules["layer1.0.relu"].backward(np.ones((4, 16, 16, 16), np.float32))
    for bad, error in ((x[:, :2], ValueError), (x.astype(np.float64), TypeError),
                       (x[0], ValueError), (x[:0], ValueError)):
        with pytest.raises(error) as cached:
            model.forward(bad)
        with pytest.raises(error) as fused:
            model.forward(bad, keep_cache=False)
        assert str(fused.value) == str(cached.value)
    bn = modules["layer1.0.bn1"]
    bn.running_mean, bn.running_var = (bn.running_mean.astype(np.float64),  # set by hand,
                                       bn.running_var.astype(np.float64))   # another dtype
    with pytest.raises(TypeError, match="float64 parameters but got a float32 input"):
        model.forward(x, keep_cache=False)

    identity = cn.Residual({"same": cn.models.Identity()})
    y = rng.standard_normal((2, 3, 4, 4))
    out = identity.forward(y, keep_cache=False)
    np.testing.assert_array_equal(out, np.maximum(2 * y, 0))
    assert not np.shares_memory(out, y) and (y < 0).any()  # y itself unchanged: not clipped


@pytest.mark.parametrize("after, taken", [
    (["Identity", "BatchNorm2D", "Identity", "ReLU"], [0, 1, 2, 3]),
    (["BatchNorm2D", "ReLU", "ReLU"], [0, 1]),
    (["Identity", "MaxPool2D"], []),
    (["Identity", "training BatchNorm2D", "ReLU"], []),
    (["ReLU", "Identity"], [0]),
])
def test_inference_takes_into_a_convolution_what_follows_it(after, taken):
    """What inference runs inside a Conv2D: a foldable BatchNorm2D, then a ReLU, through any
    Identity between; a BatchNorm in training mode stops it (it must run on the batch)."""
    from cnnumpy.models.containers import _fused_with

    conv = cn.Conv2D(2, 2, 3, padding=1)
    make = {"Identity": cn.models.Identity, "ReLU": cn.ReLU, "MaxPool2D": lambda: cn.MaxPool2D(2),
            "BatchNorm2D": lambda: cn.BatchNorm2D(2).eval(),
            "training BatchNorm2D": lambda: cn.BatchNorm2D(2)}
    following = [make[name]() for name in after]
    x = np.zeros((4, 2, 8, 8), np.float32)  # 256 outputs a channel, 18 weights: folding pays
    assert _fused_with(conv, following, x) == [following[i] for i in taken]
