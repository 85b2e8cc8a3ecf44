"""Optimizers: hand-computed steps, PyTorch's update rules, in-place float32, state round trip."""

import numpy as np
import pytest

import cnnumpy as cn


def one_parameter_layer(value=1.0, dtype=np.float64):
    """A Linear(1, 1) whose weight is `value` and bias 0: a model with two scalars."""
    layer = cn.Linear(1, 1, rng=np.random.default_rng(0), dtype=dtype)
    layer.W[...] = value
    return layer


def set_gradients(model, grads):
    """Assign new gradient arrays, as a layer written elsewhere may do in backward."""
    for name, grad in grads.items():
        setattr(model, "d" + name, np.array(grad, dtype=model.dtype))


def write_gradients(model, grads):
    """Write `grads` (by dotted name) into the model's gradient arrays, as backward does."""
    arrays = model.gradients()
    for name, grad in grads.items():
        arrays[name][...] = grad


def test_sgd_nesterov_weight_decay_by_hand():
    layer = one_parameter_layer(1.0)
    opt = cn.SGD(layer, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    for _ in range(2):
        set_gradients(layer, {"W": [[0.5]], "b": [0.0]})
        opt.step()
    # step 1: d = 0.5 + 0.1 = 0.6, buf = 0.6, d = 0.6 + 0.9*0.6 = 1.14, W = 1 - 0.114 = 0.886
    # step 2: d = 0.5 + 0.0886, buf = 0.9*0.6 + d = 1.1286, d + 0.9*buf = 1.60434
    assert layer.W[0, 0] == pytest.approx(0.886 - 0.160434, rel=1e-13)
    assert opt.steps == 2


def test_sgd_plain_momentum_and_dampening_by_hand():
    layer = one_parameter_layer(0.0)
    opt = cn.SGD(layer, lr=1.0, momentum=0.5, dampening=0.5)
    for _ in range(2):
        set_gradients(layer, {"W": [[1.0]], "b": [0.0]})
        opt.step()
    # buf = 1, then 0.5*1 + 0.5*1 = 1: two steps of 1
    assert layer.W[0, 0] == pytest.approx(-2.0)


def test_adam_and_adamw_first_step_by_hand():
    for cls, expected in ((cn.Adam, 2.0 - 0.1), (cn.AdamW, 2.0 * (1 - 0.1 * 0.5) - 0.1)):
        layer = one_parameter_layer(2.0)
        opt = cls(layer, lr=0.1, weight_decay=0.5 if cls is cn.AdamW else 0.0)
        set_gradients(layer, {"W": [[3.0]], "b": [0.0]})
        opt.step()  # m̂ = g, v̂ = g²: the step is lr · g / (|g| + eps)
        assert layer.W[0, 0] == pytest.approx(expected, abs=1e-8)
        assert layer.b[0] == 0.0


def test_updates_in_place_in_float32_with_fresh_gradients(rng):
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    params = model.parameters()
    before = {name: value.copy() for name, value in params.items()}
    for opt in (cn.SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                cn.Adam(model, lr=0.1, weight_decay=1e-3), cn.AdamW(model, lr=0.1)):
        for _ in range(2):
            for _, layer in model.named_layers():  # new gradient arrays at every step
                for key in layer.param_names:
                    setattr(layer, "d" + key, rng.standard_normal(getattr(layer, key).shape)
                            .astype(np.float32))
            opt.step()
        for name, value in model.parameters().items():
            assert value is params[name] and value.dtype == np.float32
            assert not np.array_equal(value, before[name])
        for arrays in opt.state.values():
            assert all(a.dtype == np.float32 for a in arrays.values())


def torch_reference_run(torch_cls, options, start, grads):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.tensor(start))
    opt = torch_cls([param], **options)
    for grad in grads:
        param.grad = torch.tensor(grad)
        opt.step()
    return param.detach().numpy()


@pytest.mark.parametrize("name, options", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-2}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 1e-2}),
    ("SGD", {"lr": 0.2}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3}),
])
def test_against_torch(name, options, rng):
    torch = pytest.importorskip("torch")
    layer = cn.Linear(4, 3, rng=rng, dtype=np.float64)
    start = layer.W.copy()
    grads = [rng.standard_normal(start.shape) for _ in range(5)]
    opt = getattr(cn, name)(layer, **options)
    for grad in grads:
        set_gradients(layer, {"W": grad, "b": np.zeros(3)})
        opt.step()
    expected = torch_reference_run(getattr(torch.optim, name), options, start, grads)
    np.testing.assert_allclose(layer.W, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls, options", [
    (cn.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (cn.AdamW, {"lr": 0.01, "betas": (0.85, 0.99)}),
])
def test_state_dict_round_trip_continues_identically(cls, options, rng):
    def run(layer, opt, grads):
        for grad in grads:
            set_gradients(layer, {"W": grad, "b": grad[:, 0]})
            opt.step()

    grads = [rng.standard_normal((3, 4)) for _ in range(6)]
    straight = cn.Linear(4, 3, rng=np.random.default_rng(5), dtype=np.float64)
    straight_opt = cls(straight, **options)
    run(straight, straight_opt, grads)

    first = cn.Linear(4, 3, rng=np.random.default_rng(5), dtype=np.float64)
    first_opt = cls(first, **options)
    run(first, first_opt, grads[:3])
    state = first_opt.state_dict()
    second = cn.Linear(4, 3, rng=np.random.default_rng(9), dtype=np.float64)
    second.load_parameters(first.parameters())
    second_opt = cls(second, lr=1.0)
    second_opt.load_state_dict({**state, "arrays": {k: v.copy() for k, v in state["arrays"].items()}})
    assert second_opt.hyperparameters() == first_opt.hyperparameters()
    run(second, second_opt, grads[3:])
    for name, value in straight.parameters().items():
        assert np.array_equal(value, second.parameters()[name]), name


def test_errors(rng):
    layer = cn.Linear(2, 2, rng=rng)
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0.0, got -1"):
        cn.SGD(layer, lr=-1)
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        cn.SGD(layer, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"momentum must be a finite number in \[0.0, 1.0\), got 1"):
        cn.SGD(layer, lr=0.1, momentum=1)
    with pytest.raises(ValueError, match="betas must be a pair"):
        cn.Adam(layer, betas=0.9)
    with pytest.raises(TypeError, match="needs a cnnumpy module"):
        cn.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="without parameters"):
        cn.SGD(cn.ReLU(), lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        cn.optim.build_optimizer("rmsprop", layer)
    sgd_state = cn.SGD(layer, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="optimizer state is for 'SGD', not Adam"):
        cn.Adam(layer).load_state_dict(sgd_state)
    bad = {**sgd_state, "arrays": {"momentum_buffer/W": np.zeros((3, 3), np.float32)}}
    with pytest.raises(ValueError, match=r"momentum_buffer/W' has shape \(3, 3\)"):
        cn.SGD(layer, lr=0.1).load_state_dict(bad)


def steps_agree(models, step, other_step, steps=3):
    """Give both `models` the same random gradients and call `step` (updating models[0])
    and `other_step` (models[1]) `steps` times: the weights agree bit for bit."""
    rng = np.random.default_rng(1)
    for _ in range(steps):
        grads = {name: rng.standard_normal(p.shape) for name, p in models[0].parameters().items()}
        for model in models:
            write_gradients(model, grads)
        step()
        other_step()
    for name, value in models[0].parameters().items():
        np.testing.assert_array_equal(models[1].parameters()[name], value, err_msg=name)


@pytest.mark.parametrize("make", [
    lambda m: cn.SGD(m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda m: cn.SGD(m, lr=0.1, momentum=0.5, dampening=0.3),
    lambda m: cn.Adam(m, lr=0.01, weight_decay=1e-3),
    lambda m: cn.AdamW(m, lr=0.01)])
def test_an_update_made_in_parts_is_the_whole_update(make):
    """A distributed run's ranks each update a range of the elements end to end
    (`step(part)`), each with an optimizer of its own: ranges that cut through parameters,
    one of which holds no element of some parameters, give bit for bit the weights and state
    of whole steps (parameters cut between ranks start their buffers on every rank)."""
    models = [cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0)) for _ in range(2)]
    whole = make(models[0])
    total = models[0].num_parameters()
    cuts = [0, 5, 300, total - 7, total]  # inside conv1.W, inside fc1.W, inside fc2.b
    parts = [slice(start, stop) for start, stop in zip(cuts, cuts[1:])]
    ranks = [make(models[1]) for _ in parts]  # as four ranks, sharing one parameter memory
    steps_agree(models, whole.step, lambda: [rank.step(part) for rank, part in zip(ranks, parts)])
    for key, value in whole.state_dict()["arrays"].items():
        ends = np.cumsum([0] + [p.size for p in models[0].parameters().values()])
        start = ends[list(models[0].parameters()).index(key.partition("/")[2])]
        for rank, part in zip(ranks, parts):  # each rank's elements of the state array
            here = slice(max(part.start - start, 0), max(min(part.stop - start, value.size), 0))
            if here.start < here.stop:
                np.testing.assert_array_equal(
                    rank.state_dict()["arrays"][key].reshape(-1)[here],
                    value.reshape(-1)[here], err_msg=key)


@pytest.mark.parametrize("make", [
    lambda m: cn.SGD(m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda m: cn.SGD(m, lr=0.1, momentum=0.5, dampening=0.3),
    lambda m: cn.SGD(m, lr=0.1),
    lambda m: cn.Adam(m, lr=0.01, weight_decay=1e-3),
    lambda m: cn.AdamW(m, lr=0.01)])
def test_an_update_made_block_by_block_is_the_whole_update(make):
    """A parameter is updated `block` elements at a time; every block of a parameter's
    first update is a first update (SGD with dampening starts its buffer at d, not at
    (1 - dampening)·d), and plain SGD keeps no buffer."""
    models = [cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(0)) for _ in range(2)]
    whole, blocked = (make(model) for model in models)
    whole.block, blocked.block = models[0].num_parameters(), 7
    steps_agree(models, whole.step, blocked.step)
    arrays = whole.state_dict()["arrays"]
    assert arrays.keys() == blocked.state_dict()["arrays"].keys()
    assert bool(arrays) == bool(whole.slots_in_use())
    for key, value in arrays.items():
        np.testing.assert_array_equal(blocked.state_dict()["arrays"][key], value, err_msg=key)


def test_a_parameter_not_contiguous_is_updated_whole(rng):
    layer = one_parameter_layer(0.0)
    layer.W = np.asfortranarray(rng.standard_normal((3, 4)))[:, ::2]  # neither C nor F order
    layer.dW = np.ones((3, 2))
    before = layer.W.copy()
    opt = cn.SGD(layer, lr=0.5, momentum=0.9)
    opt.block = 2
    opt.step()
    np.testing.assert_array_equal(layer.W, before - 0.5)
    with pytest.raises(ValueError, match="parameter W is not contiguous"):
        opt.step(slice(0, 3))


def test_state_set_from_elsewhere_is_updated_in_place(rng):
    """A momentum buffer in Fortran order (set by hand, or made by code that keeps a
    parameter's memory order) and an Adam state with one slot of two still take the update:
    blocks are views of C-contiguous state, and a missing slot starts as at a first step."""
    layer = one_parameter_layer(0.0)
    layer.W = np.zeros((3, 4))
    opt = cn.SGD(layer, lr=1.0, momentum=0.5)
    opt.block = 5
    opt.state["momentum_buffer"]["W"] = np.asfortranarray(np.ones((3, 4)))
    opt.state["momentum_buffer"]["b"] = np.zeros(1)
    set_gradients(layer, {"W": np.ones((3, 4)), "b": [0.0]})
    opt.step()  # buf = 0.5·1 + 1 = 1.5
    np.testing.assert_array_equal(opt.state["momentum_buffer"]["W"], 1.5)
    np.testing.assert_array_equal(layer.W, -1.5)
    adam = cn.Adam(one_parameter_layer(1.0), lr=0.1)
    adam.state["exp_avg"]["W"] = np.zeros((1, 1))
    set_gradients(adam.model, {"W": [[2.0]], "b": [0.0]})
    adam.step()
    assert adam.model.W[0, 0] == pytest.approx(0.9, abs=1e-7)
