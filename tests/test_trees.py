"""Models as trees with buffers: walking order, state dicts, astype, checkpoints; the batch
split over threads computing exactly the whole-batch step (BatchNorm and Dropout included);
receptive fields, unit gradients and the summary through residual branches."""

import copy
import re
import threading

import numpy as np
import pytest

import cnnumpy as cn
from architectures import conv64
from cnnumpy import insight, parallel
from cnnumpy.part_processes import fork_available
from cnnumpy.shapes import Field, traced_fields
from cnnumpy.summary import summarize


def small_resnet(seed=0, dtype=np.float64, input_shape=(1, 8, 8), classes=3):
    return cn.models.resnet20(input_shape=input_shape, num_classes=classes,
                              rng=np.random.default_rng(seed), dtype=dtype)


def warm_up(model, rng, batches=3, n=6):
    """A few training-mode forward passes: running statistics away from 0 and 1."""
    for _ in range(batches):
        model.forward(rng.standard_normal((n, *model.input_shape)).astype(model.dtype) * 2 + 1)


# ------------------------------------------------------------------ the tree and its state


def test_a_sequential_s_layers_by_name_and_by_position():
    conv, relu, pool = cn.Conv2D(1, 2, 3), cn.ReLU(), cn.MaxPool2D(2)
    named = cn.Sequential({"conv": conv, "relu": relu, "pool": pool})
    assert named["relu"] is relu and named[1] is relu and named[-1] is pool
    assert named[np.int64(0)] is conv and cn.Sequential([conv, relu])["1"] is relu
    with pytest.raises(IndexError, match=r"layer 3 of a Sequential of 3 layers"):
        named[3]
    with pytest.raises(KeyError, match=r"no layer named 'fc'; the layers are conv, relu, pool"):
        named["fc"]


def test_named_modules_parents_first_in_definition_order():
    model = cn.models.CifarResNet(depth=8, width=4, input_shape=(1, 8, 8), num_classes=3,
                                  rng=np.random.default_rng(0))
    block = ["conv1", "bn1", "relu1", "conv2", "bn2"]
    expected = (["", "conv1", "bn1", "relu", "layer1", "layer1.0"]
                + [f"layer1.0.{n}" for n in block + ["add", "relu"]]
                + [name for i in (2, 3) for name in
                   [f"layer{i}", f"layer{i}.0", *(f"layer{i}.0.{n}" for n in block),
                    f"layer{i}.0.downsample", f"layer{i}.0.downsample.0",
                    f"layer{i}.0.downsample.1", f"layer{i}.0.add", f"layer{i}.0.relu"]]
                + ["avgpool", "flatten", "fc"])
    assert [name for name, _ in model.named_modules()] == expected
    assert list(dict(model.named_children())) == ["conv1", "bn1", "relu", "layer1", "layer2",
                                                  "layer3", "avgpool", "flatten", "fc"]


def test_state_dict_holds_parameters_and_live_buffers():
    model = small_resnet()
    state = model.state_dict()
    assert set(state) == set(model.parameters()) | set(model.buffers())
    assert {"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
            "layer2.0.downsample.1.running_var"} <= set(model.buffers())
    assert not set(model.buffers()) & set(model.parameters())
    state["layer3.2.bn2.running_mean"][...] = 7.0
    assert np.all(model["layer3"]["2"].bn2.running_mean == 7.0)


def test_load_state_dict_lists_every_mismatch():
    model = small_resnet()
    state = {name: array.copy() for name, array in model.state_dict().items()}
    del state["bn1.running_var"], state["fc.b"]
    state["bn9.gamma"] = np.ones(3)
    state["conv1.W"] = np.zeros((16, 1, 5, 5))
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    for part in ("missing ['bn1.running_var', 'fc.b']", "unexpected ['bn9.gamma']",
                 "conv1.W: expected (16, 1, 3, 3), got (16, 1, 5, 5)"):
        assert part in message


def test_astype_converts_float_buffers_and_keeps_integer_ones():
    model = cn.Sequential([cn.Conv2D(1, 2, 3, bias=False), cn.BatchNorm2D(2), cn.ReLU(),
                           cn.Flatten(), cn.Dropout(0.2, rng=np.random.default_rng(0)),
                           cn.Linear(18, 2)])
    stream = model["4"].rng_state.copy()
    model.astype(np.float64)
    dtypes = {name: array.dtype for name, array in model.state_dict().items()}
    assert dtypes == {"0.W": np.float64, "1.gamma": np.float64, "1.beta": np.float64,
                      "1.running_mean": np.float64, "1.running_var": np.float64,
                      "1.num_batches_tracked": np.int64, "4.rng_state": np.uint64,
                      "5.W": np.float64, "5.b": np.float64}
    assert all(grad.dtype == np.float64 for grad in model.gradients().values())
    np.testing.assert_array_equal(model["4"].rng_state, stream)
    out = model.forward(np.random.default_rng(1).standard_normal((4, 1, 5, 5)))
    assert out.dtype == np.float64


def test_checkpoint_round_trip_reproduces_eval_logits_exactly(tmp_path, rng):
    model = small_resnet(dtype=np.float32)
    warm_up(model, rng)
    assert not np.allclose(model["bn1"].running_var, 1)
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    expected = model.eval().forward(x)
    path = cn.save_checkpoint(tmp_path / "net.npz", model)
    again = cn.load_checkpoint(path).build_model().eval()
    np.testing.assert_array_equal(again.forward(x), expected)
    assert again["layer3"]["2"].bn2.num_batches_tracked == 3


def test_checkpoint_without_buffers_names_them(tmp_path):
    model = small_resnet(dtype=np.float32)
    checkpoint = cn.load_checkpoint(cn.save_checkpoint(tmp_path / "net.npz", model))
    del checkpoint.parameters["layer2.0.downsample.1.running_mean"]
    with pytest.raises(ValueError, match=r"net.npz.*missing \['layer2.0.downsample.1."
                                         r"running_mean'\]"):
        checkpoint.build_model()


# ------------------------------------------------------------------ the batch split

needs_threads = pytest.mark.skipif(parallel.ThreadpoolController is None,
                                   reason="threadpoolctl (extra 'threads') not installed")
# The parts of a split batch in threads, and after the first in worker processes (Linux).
SPLITS = [pytest.param(False, id="threads"),
          pytest.param(True, id="processes", marks=pytest.mark.skipif(
              not fork_available(), reason="worker processes need os.fork (Linux)"))]


def dropout_net(seed=0):
    """BatchNorm in both forms and Dropout on images and on features."""
    rng = np.random.default_rng(seed)
    return cn.Sequential([
        cn.Conv2D(2, 4, 3, padding=1, rng=rng, dtype=np.float64, bias=False),
        cn.BatchNorm2D(4, dtype=np.float64), cn.ReLU(), cn.Dropout(0.3, rng=rng),
        cn.MaxPool2D(3, 2, padding=1), cn.Flatten(), cn.Linear(36, 8, rng=rng, dtype=np.float64),
        cn.BatchNorm1D(8, dtype=np.float64), cn.ReLU(), cn.Dropout(0.5, rng=rng),
        cn.Linear(8, 3, rng=rng, dtype=np.float64)])


@needs_threads
@pytest.mark.parametrize("processes", SPLITS)
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("make, shape", [(small_resnet, (1, 8, 8)), (dropout_net, (2, 5, 5))])
def test_split_step_equals_the_whole_batch_step(make, shape, workers, processes):
    """Two training steps: logits, loss, every gradient and every buffer (running statistics,
    batch counts, Dropout streams) equal to 1e-10 with and without the split."""
    rng = np.random.default_rng(5)
    model = make()
    whole = copy.deepcopy(model)
    split_passes = cn.BatchParallel(model, workers, processes=processes)
    whole_passes = cn.BatchParallel(whole, 1)
    assert split_passes.workers == workers
    criterion = cn.CrossEntropyLoss()
    optimizers = cn.SGD(model, lr=0.1), cn.SGD(whole, lr=0.1)
    for step in range(2):
        x, labels = rng.standard_normal((8, *shape)), rng.integers(0, 3, 8)
        loss, logits = split_passes.forward_backward(x, labels, criterion)
        whole_loss, whole_logits = whole_passes.forward_backward(x, labels, criterion)
        np.testing.assert_allclose(logits, whole_logits, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(loss, whole_loss, rtol=1e-10)
        for name, grad in whole.gradients().items():
            np.testing.assert_allclose(model.gradients()[name], grad, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        for name, buffer in whole.buffers().items():
            np.testing.assert_allclose(model.buffers()[name], buffer, rtol=1e-10, atol=0,
                                       err_msg=name)
        for optimizer in optimizers:
            optimizer.step()
    counts = [value for name, value in model.buffers().items()
              if name.endswith("num_batches_tracked")]
    assert counts and all(count == 2 for count in counts)  # once per step, not per part


@needs_threads
@pytest.mark.parametrize("processes", SPLITS)
def test_an_error_in_one_part_ends_the_step_without_hanging(processes):
    model = small_resnet()
    passes = cn.BatchParallel(model, 2, processes=processes)
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8))
    labels = np.array([0, 1, 2, 0, 1, 3])  # 3 is out of range, in the second part only
    raised = []

    def step():
        try:
            passes.forward_backward(x, labels, cn.CrossEntropyLoss())
        except Exception as error:
            raised.append(error)

    thread = threading.Thread(target=step, daemon=True)  # a daemon: a hang fails, not blocks
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the split step hangs after an error in one part"
    assert len(raised) == 1 and isinstance(raised[0], ValueError)
    assert re.search(r"labels must be in \[0, 2\].*got 3", str(raised[0]))
    labels[-1] = 2  # the next step runs
    loss, _ = passes.forward_backward(x, labels, cn.CrossEntropyLoss())
    assert np.isfinite(loss)


# ------------------------------------------------------------------ fields through branches


def output_field(model, input_shape):
    recorded = cn.trace.record(model, np.zeros((1, *input_shape)))
    return traced_fields(recorded)[id(recorded.calls[0].output)]


@pytest.mark.parametrize("main, shortcut, hw, expected", [
    # two 3x3 convolutions (field 5) and a 1x1 shortcut (field 1): the union is 5
    ([(3, 1, 1), (3, 1, 1)], (1, 1, 0), 9, Field(5, 1, -2)),
    # 3x3 stride 2 pad 1: [2i-1, 2i+2); then 3x3 pad 1: [2i-3, 2i+4), field 7, jump 2;
    # a 1x1 stride-2 shortcut sees [2i, 2i+1): the union is the main path's
    ([(3, 2, 1), (3, 1, 1)], (1, 2, 0), 10, Field(7, 2, -3)),
    # 3x3 stride 2 pad 1: [2i-1, 2i+2); a 4x4 stride-2 pad-1 shortcut: [2i-1, 2i+3), larger
    ([(3, 2, 1)], (4, 2, 1), 10, Field(4, 2, -1)),
    # 3x3 stride 2 pad 0: [2i, 2i+3); a 2x2 stride-2 pad-0 shortcut [2i, 2i+2)
    ([(3, 2, 0), (1, 1, 0)], (2, 2, 0), 9, Field(3, 2, 0)),
])
def test_receptive_field_of_a_residual_block_is_the_union_of_its_paths(main, shortcut, hw,
                                                                       expected):
    block = cn.Residual({f"conv{i}": conv64(1, 1, *window) for i, window in enumerate(main)},
                        conv64(1, 1, *shortcut), activation=None)
    assert output_field(block, (1, hw, hw)) == (expected, expected)
    # the public list: each convolution in the order they run, then the sum
    assert cn.receptive_fields(block, input_shape=(1, hw, hw))[-1] == expected
    assert cn.receptive_field(block, input_shape=(1, hw, hw)) == expected.size


def linear_branched_net(seed=0):
    """A stem and a residual block without ReLU or max-pooling: the output is linear in the
    input, so a unit's gradient fills its whole receptive field (7x7: 3, then 3 + 2 + 2)."""
    rng = np.random.default_rng(seed)
    return cn.Sequential({
        "stem": cn.Conv2D(1, 3, 3, padding=1, rng=rng, dtype=np.float64),
        "block": cn.Residual({"conv1": cn.Conv2D(3, 3, 3, padding=1, rng=rng, dtype=np.float64),
                              "bn1": cn.BatchNorm2D(3, dtype=np.float64),
                              "conv2": cn.Conv2D(3, 3, 3, padding=1, rng=rng, dtype=np.float64)},
                             cn.Conv2D(3, 3, 1, rng=rng, dtype=np.float64), activation=None),
    })


def support_box(gradient) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(np.abs(gradient).sum(axis=0))
    return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize("unit, expected", [((5, 6), (2, 3, 7, 7)), ((0, 11), (-3, 8, 7, 7))])
def test_unit_gradient_fills_the_receptive_field_box_of_a_linear_branched_net(unit, expected,
                                                                             rng):
    model = linear_branched_net()
    image = rng.standard_normal((1, 12, 12))
    box = insight.receptive_field_box(model, "block", unit, (1, 12, 12))
    assert box == expected
    top, left, height, width = box
    inside = (max(top, 0), max(left, 0), min(top + height, 12) - max(top, 0),
              min(left + width, 12) - max(left, 0))  # the box, clipped to the image
    assert support_box(insight.unit_gradient(model, image, "block", unit)) == inside


def test_unit_gradient_of_a_resnet_block_lies_within_its_box(rng):
    model = small_resnet(input_shape=(1, 16, 16))
    warm_up(model, rng)
    image = rng.standard_normal((1, 16, 16))
    top, left, height, width = insight.receptive_field_box(model, "layer2.0", (2, 3))
    gradient = insight.unit_gradient(model, image, "layer2.0", (2, 3))
    rows, cols = np.nonzero(np.abs(gradient).sum(axis=0))
    assert rows.size and cols.size
    assert top <= rows.min() and rows.max() < top + height
    assert left <= cols.min() and cols.max() < left + width


def test_summary_of_resnet20_shows_blocks_and_their_layers():
    model = small_resnet(dtype=np.float32, input_shape=(1, 28, 28), classes=10)
    rows = {row.name: row for row in summarize(model, (1, 28, 28)).rows}
    block, conv1 = rows["layer1.0"], rows["layer1.0.conv1"]
    assert (block.type, block.leaf, conv1.type, conv1.leaf) == ("Residual", False, "Conv2D", True)
    # conv1 3x3 (field 3), then layer1.0.conv1 (5) and conv2 (7); the identity shortcut's 3
    assert (conv1.field[0].size, rows["layer1.0.conv2"].field[0].size, block.field[0].size) == \
        (5, 7, 7)
    # layer2.0: conv1 stride 2 (jump 1 -> 2): fields 3 + 6 * 2 = 15 before, 17 and 21 after
    assert rows["layer2.0.conv1"].field[0] == Field(17, 2, -8)
    assert rows["layer2.0"].field[0] == Field(21, 2, -10)
    assert block.parameters == 2 * 16 * 16 * 9 + 2 * 2 * 16
    assert block.macs == 2 * 16 * 28 * 28 * 16 * 9
    assert rows["fc"].field is None
    text = model.summary((1, 28, 28))
    assert "layer1.0.conv1" in text and "Total parameters: 272,186" in text


def test_astype_converts_the_fixed_scale_of_a_batchnorm_without_affine():
    model = cn.Sequential([cn.BatchNorm2D(3, affine=False)]).astype(np.float64)
    assert model["0"].gamma.dtype == model["0"].beta.dtype == np.float64
    assert model.parameters() == {} and model["0"].running_var.dtype == np.float64


def test_modules_in_a_list_attribute_are_refused_by_name():
    class Stack(cn.Module):
        def __init__(self):
            self.blocks = [cn.ReLU(), cn.ReLU()]

    with pytest.raises(TypeError, match=r"Stack.blocks holds modules in a list: .* hold them in a cnnumpy.Sequential"):
        list(Stack().named_modules())


def test_residual_refuses_a_shortcut_or_names_it_cannot_use():
    main = {"conv": cn.Conv2D(2, 2, 3, padding=1)}
    with pytest.raises(TypeError, match=r"shortcut must be a cnnumpy module or None"):
        cn.Residual(main, shortcut="identity")
    with pytest.raises(ValueError, match=r"main path names must be identifiers .* 'train'"):
        cn.Residual({"train": cn.ReLU()})


def test_a_summary_between_forward_and_backward_keeps_the_step(rng):
    """Tracing (summary, receptive fields, plots) leaves a forward pass's caches alone."""
    model = cn.models.resnet20(input_shape=(1, 8, 8), num_classes=3, rng=rng, dtype=np.float64)
    x, dout = rng.standard_normal((4, 1, 8, 8)), rng.standard_normal((4, 3))
    reference = copy.deepcopy(model)
    reference.forward(x)
    expected = reference.backward(dout)
    model.forward(x)
    model.summary((1, 8, 8))
    cn.receptive_fields(model)
    np.testing.assert_array_equal(model.backward(dout), expected)


@pytest.mark.parametrize("processes", SPLITS)
def test_split_pass_keeps_each_modules_own_mode(rng, processes):
    """A BatchNorm frozen in eval mode inside a training model stays frozen in the parts."""
    model = cn.models.resnet20(input_shape=(1, 8, 8), num_classes=3, rng=rng, dtype=np.float64)
    model["bn1"].eval()
    before = model["bn1"].running_mean.copy()
    x, labels = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 3, 6)
    whole = copy.deepcopy(model)
    loss_whole, _ = cn.BatchParallel(whole, workers=1).forward_backward(x, labels,
                                                                        cn.CrossEntropyLoss())
    loss_split, _ = cn.BatchParallel(model, workers=2, processes=processes).forward_backward(
        x, labels, cn.CrossEntropyLoss())
    assert loss_split == pytest.approx(loss_whole, rel=1e-12)
    np.testing.assert_array_equal(model["bn1"].running_mean, before)


@needs_threads
@pytest.mark.parametrize("centre, apart, std, meetings", [
    (0.0, 3.0, 1.0, 2), (1.0, 1e4, 1.0, 2), (1e4, 0.05, 0.01, 3)])
def test_split_batchnorm_meets_once_in_forward_unless_the_mean_is_far_from_zero(
        monkeypatch, centre, apart, std, meetings, batchnorm_way):
    """Each part centres its values on its own mean and the parts meet once for their
    statistics when the batch's mean is within about 30 standard deviations of zero, also
    with parts' means far apart (their centred values then differ from the batch's by
    much); far from zero, they meet a second time, for the exact variance. Either way a
    float64 split's forward and backward equal the whole batch's to 1e-10."""
    sums = []
    part_sum = parallel._Parts.sum
    monkeypatch.setattr(parallel._Parts, "sum", lambda parts, index, array: (
        sums.append(index) or part_sum(parts, index, array)))
    rng = np.random.default_rng(8)
    model = cn.Sequential([cn.BatchNorm2D(3, dtype=np.float64)])
    whole = copy.deepcopy(model)
    x = rng.standard_normal((6, 3, 4, 4)) * std + centre
    x[:3] -= apart  # the parts' means: centre - apart and centre
    dout = rng.standard_normal(x.shape)

    def step(replica, part):
        return replica.forward(x[part]), replica.backward(dout[part])

    parts = cn.BatchParallel(model, 2)._run(step, len(x))
    assert sums.count(0) == meetings  # forward, then backward's one
    out, dx = whole.forward(x), whole.backward(dout)
    for got, expected in ((np.concatenate([o for o, _ in parts]), out),
                          (np.concatenate([d for _, d in parts]), dx)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * abs(expected).max())
    for name, buffer in whole.buffers().items():
        np.testing.assert_allclose(model.buffers()[name], buffer, rtol=1e-10, err_msg=name)


def test_split_batchnorm_in_float32_is_as_close_as_the_whole_batch(batchnorm_way):
    """float32, two parts a standard deviation apart, the mean 31 standard deviations from
    zero (one meeting still): the running variance within 2e-6 of float64's and the outputs
    within 2e-5, no further than the whole batch's own (whose float32 mean leaves 1e-4 in
    the outputs here). Combined from the parts' rounded sums alone, the variance was off by
    6e-5 (the sums' float32 error times the parts' distance)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 16, 64, 64), dtype=np.float32) + 31
    x[:16] += 1
    model = cn.Sequential([cn.BatchNorm2D(16, momentum=1.0)])
    whole = copy.deepcopy(model)
    out = np.concatenate(cn.BatchParallel(model, 2)._run(
        lambda replica, part: replica.forward(x[part]), len(x)))
    values = x.astype(np.float64)
    variance = values.var(axis=(0, 2, 3), keepdims=True)
    expected = (values - values.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(variance + 1e-5)
    unbiased = variance.ravel() * x[:, 0].size / (x[:, 0].size - 1)
    assert abs(model[0].running_var / unbiased - 1).max() < 2e-6
    assert abs(out - expected).max() < 2e-5
    assert abs(out - expected).max() <= abs(whole.forward(x) - expected).max()


def test_a_split_of_one_part_is_the_whole_batch(batchnorm_way):
    """A one-process run's split (`WholeBatch`, as `fit` sets it) takes the whole batch's way,
    bit for bit: no sums, no combination."""
    from cnnumpy.distributed import WholeBatch

    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32) + 2
    dout = rng.standard_normal(x.shape).astype(np.float32)
    model = cn.Sequential([cn.BatchNorm2D(3)])
    whole = copy.deepcopy(model)
    parallel.set_batch_split(model, WholeBatch(len(x)))
    np.testing.assert_array_equal(model.forward(x), whole.forward(x))
    np.testing.assert_array_equal(model.backward(dout), whole.backward(dout))
    np.testing.assert_array_equal(model[0].running_var, whole[0].running_var)


def test_split_batchnorm_is_exact_for_parts_whose_means_differ_far_from_zero(batchnorm_way):
    """Means of 1e4, standard deviations of 0.01: the parts meet a second time and centre on
    the batch's mean (combined from the parts' own means, the variance's float64 difference
    would be off by 1e-5; a sum's order alone moves the mean by 1e-12, 1e-10 of a standard
    deviation)."""
    rng = np.random.default_rng(7)
    model = cn.Sequential([cn.BatchNorm2D(3, dtype=np.float64)])
    whole = copy.deepcopy(model)
    x = rng.standard_normal((7, 3, 4, 4)) * 0.01 + 1e4
    x[:3] += 0.05  # the first part's mean is off the second's by 5 standard deviations
    dout = rng.standard_normal(x.shape)

    def step(replica, part):
        return replica.forward(x[part]), replica.backward(dout[part])

    parts = cn.BatchParallel(model, 2)._run(step, len(x))
    out, dx = whole.forward(x), whole.backward(dout)
    np.testing.assert_allclose(np.concatenate([o for o, _ in parts]), out, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.concatenate([d for _, d in parts]), dx, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model[0].running_var, whole[0].running_var, rtol=1e-7)
