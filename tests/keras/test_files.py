"""snapset files from Keras: round trips, the move to and from PyTorch, and refused files.

``snapset.keras.save`` writes the file ``snapset.torch.save`` writes (PyTorch's names and
layouts, packed codes); ``load`` puts it into a constrained twin, a plain twin, or a dict. A
refused load raises ``SnapsetFileError`` and leaves every variable of the model as it was.
"""

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset._files import SnapsetFileError  # noqa: E402
from snapset.keras.export import load, save  # noqa: E402

try:  # the files move to PyTorch where it is installed; everything else needs only Keras
    import torch

    import snapset.torch as st
except ImportError:
    torch = st = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])
SETS = {
    "binary": snapset.Binary(),
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "four": FOUR,
}
INPUTS = np.random.default_rng(0).standard_normal((8, 12, 4)).astype("float32")


def layered(seed, conv1d, conv2d, dense, multiplier):
    """Conv1D, Conv2D, Dense and Multiplier in a row, from the given layer factories; inputs
    ``(batch, 12, 4)``, outputs ``(batch, 6)``; every kernel has an even number of inputs (a
    group size of 2 fits)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((12, 4)),
            conv1d(4, 3, padding="same"),
            keras.layers.Reshape((6, 2, 4)),
            conv2d(4, 2),
            keras.layers.Flatten(),
            dense(6),
            multiplier(),
        ]
    )


def constrained(values, method, seed=0, dtype=None, **scale):
    """The four snapset layers with ``values``, ``method``, ``dtype`` and the kernels' scale
    options, named by their kinds (``plain`` leaves Keras's names: its layers pair with these
    in order)."""
    return layered(
        seed,
        lambda f, k, **kw: sk.Conv1D(
            f, k, values, method, name="conv1d", dtype=dtype, **kw, **scale
        ),
        lambda f, k: sk.Conv2D(f, k, values, method, name="conv2d", dtype=dtype, **scale),
        lambda units: sk.Dense(units, values, method, name="dense", dtype=dtype, **scale),
        lambda: sk.Multiplier(values, method, name="multiplier", dtype=dtype),
    )


def plain(values, seed=1):
    """The plain twin of ``constrained``: Keras's own layers (a snapset Multiplier with
    ``method=None``: Keras has none)."""
    return layered(
        seed,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Dense,
        lambda: sk.Multiplier(values, None),
    )


def snapshot(model):
    """Every variable's value, to tell whether a refused load changed anything."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(new, old)


def assert_same_outputs(model, other, x=INPUTS):
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def assert_same_exact_weights(model, other):
    mine, theirs = sk.exact_weights(model), sk.exact_weights(other)
    assert len(mine) == len(theirs) > 0
    for (name, value), other_value in zip(mine.items(), theirs.values(), strict=True):
        np.testing.assert_array_equal(other_value, value, err_msg=name)


def metadata(path):
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length])["__metadata__"]


# ----- round trips within Keras ---------------------------------------------------------------


@pytest.mark.parametrize("values", SETS.values(), ids=SETS)
@pytest.mark.parametrize("method", sk.METHODS)
def test_a_model_round_trips_into_a_constrained_and_a_plain_twin(values, method, tmp_path):
    model = constrained(values, method)
    path = save(model, tmp_path / "m.safetensors")
    twin = load(constrained(values, method, seed=1), path)
    assert_same_outputs(model, twin)
    assert_same_exact_weights(model, twin)
    plain_twin = load(plain(values), path)
    assert_same_outputs(model, plain_twin)
    exact = list(sk.exact_weights(model).values())
    kernels = [layer.get_weights()[0] for layer in plain_twin.layers if layer.weights]
    for value, kernel in zip(exact, kernels, strict=True):
        np.testing.assert_array_equal(kernel, value)
    described = json.loads(metadata(path)["snapset.constrained"])
    assert {spec["method"] for spec in described.values()} == {method}
    assert {tuple(spec["values"]) for spec in described.values()} == {values.values}


def test_a_file_loads_into_a_model_of_another_method(tmp_path):
    model = constrained(FOUR, "flip")
    path = save(model, tmp_path / "m.safetensors")
    for method in ("ste", "gumbel"):
        twin = load(constrained(FOUR, method, seed=2), path)
        assert_same_outputs(model, twin)
        assert_same_exact_weights(model, twin)


def test_a_plain_twin_of_snapset_layers_takes_the_exact_values(tmp_path):
    model = constrained(snapset.Ternary(), "ste")
    path = save(model, tmp_path / "m.safetensors")
    twin = load(constrained(snapset.Ternary(), None, seed=1), path)
    assert_same_outputs(model, twin)
    # and it saves packed again: harden_'s plain weights of its set
    again = save(twin, tmp_path / "again.safetensors")
    described = json.loads(metadata(again)["snapset.constrained"])
    assert {spec["method"] for spec in described.values()} == {"hardened"}
    for name, value in load(None, path).items():
        np.testing.assert_array_equal(load(None, again)[name], value)


def test_a_plain_keras_twin_is_marked_with_the_sets_it_was_given(tmp_path):
    """As PyTorch's load marks plain tensors: summary shows the sets, save packs them again,
    and values set by hand afterwards are saved as they are."""
    model = keras.Sequential([keras.Input((6,)), sk.Dense(3, snapset.Sign(), name="d")])
    path = save(model, tmp_path / "m.safetensors")
    twin = load(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="d")]), path)
    rows = {row.name: row.method for row in sk.summary(twin).rows}
    assert rows == {"d/kernel": "hardened", "d/bias": "-"}
    again = json.loads(metadata(save(twin, tmp_path / "again.safetensors"))["snapset.constrained"])
    assert again["d.weight"]["method"] == "hardened"
    twin.layers[0].kernel.assign(np.full((6, 3), 0.5, "float32"))  # no longer signs
    assert sk.summary(twin).rows[0].method == "-"
    assert (
        json.loads(metadata(save(twin, tmp_path / "off.safetensors"))["snapset.constrained"]) == {}
    )


def test_a_plain_dense_with_flip_weights_from_constrain_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((7,)), keras.layers.Dense(4, name="dense"), keras.layers.Dense(2)]
    )
    sk.constrain(model.layers[0], "kernel", FOUR)
    path = save(model, tmp_path / "m.safetensors")
    described = json.loads(metadata(path)["snapset.constrained"])
    assert list(described) == ["dense.weight"] and described["dense.weight"]["method"] == "flip"
    keras.utils.set_random_seed(1)
    twin = keras.Sequential([keras.Input((7,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    sk.constrain(twin.layers[0], "kernel", FOUR)
    twin = load(twin, path)
    x = INPUTS.reshape(8, -1)[:, :7]
    assert_same_outputs(model, twin, x)
    assert_same_exact_weights(model, twin)
    assert sk.flip_values(twin.layers[0].kernel) == FOUR


def test_a_packed_sign_file_is_a_thirtieth_of_float32(tmp_path):
    model = keras.Sequential([keras.Input((1000,)), sk.Dense(1000, snapset.Sign())])
    path = save(model, tmp_path / "m.safetensors")
    float32_bytes = 4 * (1000 * 1000 + 1000)
    assert os.path.getsize(path) < 130_000 < float32_bytes / 25
    keras_file = tmp_path / "m.keras"
    model.save(keras_file)
    assert os.path.getsize(keras_file) > float32_bytes


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_round_trip(dtype, tmp_path):
    model = constrained(FOUR, "ste", dtype=dtype)
    assert model.layers[-2].variable_dtype == dtype
    path = save(model, tmp_path / "m.safetensors")
    described = json.loads(metadata(path)["snapset.constrained"])
    assert {spec["dtype"] for spec in described.values()} == {dtype}
    twin = load(constrained(FOUR, "flip", seed=1, dtype=dtype), path)
    assert_same_outputs(model, twin)
    assert_same_exact_weights(model, twin)


# ----- scales ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["channel", 2], ids=["channel", "group2"])
@pytest.mark.parametrize("method", ["ste", "flip"])
def test_learned_scales_load_exactly_into_a_constrained_twin(scale, method, tmp_path):
    model = constrained(snapset.Ternary(), method, scale=scale)
    # scales away from their start, so that the file's alpha is the trained one
    for layer in model.layers:
        if getattr(layer, "scaling", None) is not None:
            gain = layer.weights[[v.name for v in layer.weights].index("kernel_scale_log_gain")]
            gain.assign(np.linspace(-0.5, 0.5, int(np.prod(gain.shape))).reshape(gain.shape))
    path = save(model, tmp_path / "m.safetensors")
    twin = load(constrained(snapset.Ternary(), method, seed=1, scale=scale), path)
    assert_same_outputs(model, twin)
    assert_same_exact_weights(model, twin)
    for (members, alpha), (twin_members, twin_alpha) in zip(
        sk.scaled_parts(model).values(), sk.scaled_parts(twin).values(), strict=True
    ):
        np.testing.assert_array_equal(twin_members, members)
        np.testing.assert_array_equal(twin_alpha, alpha)
    assert_same_outputs(model, load(plain(snapset.Ternary()), path))


def test_a_statistic_scale_loads_into_a_plain_twin(tmp_path):
    model = constrained(snapset.Ternary(), "ste", scale="tensor", scale_mode="absmean")
    path = save(model, tmp_path / "m.safetensors")
    assert_same_outputs(model, load(plain(snapset.Ternary()), path))
    # Sign's absmax of alpha * v is alpha again: a constrained twin takes it exactly
    sign = constrained(snapset.Sign(), "ste", scale="channel", scale_mode="absmax")
    path = save(sign, tmp_path / "sign.safetensors")
    twin = load(constrained(snapset.Sign(), "ste", 1, scale="channel", scale_mode="absmax"), path)
    assert_same_outputs(sign, twin)
    assert_same_exact_weights(sign, twin)


def test_a_statistic_that_the_values_do_not_give_back_is_refused(tmp_path):
    options = {"scale": "channel", "scale_mode": "absmean"}
    model = constrained(snapset.Ternary(), "ste", **options)  # zeros lower absmean(alpha * v)
    path = save(model, tmp_path / "m.safetensors")
    twin = constrained(snapset.Ternary(), "ste", seed=1, **options)
    before = snapshot(twin)
    with pytest.raises(SnapsetFileError, match="recomputes the scales"):
        load(twin, path)
    assert_unchanged(twin, before)


# ----- input quantizers -----------------------------------------------------------------------


def quantized(seed, method="ste"):
    """Dense layers with input quantizers of every kind of state: none (a plain sign, token
    absmax) and learned scales (tensor, channel)."""
    keras.utils.set_random_seed(seed)
    int8 = snapset.ValueSet(range(-128, 128))
    return keras.Sequential(
        [
            keras.Input((6,)),
            sk.Dense(5, FOUR, method, input_quantizer=sk.Quantize(snapset.Sign())),
            sk.Dense(
                5,
                FOUR,
                method,
                input_quantizer=sk.Quantize(
                    snapset.Ternary(), scale="tensor", scale_mode="learned"
                ),
            ),
            sk.Dense(
                4,
                FOUR,
                method,
                input_quantizer=sk.Quantize(int8, scale="channel", scale_mode="learned"),
            ),
            sk.Dense(3, snapset.Sign(), method, input_quantizer=sk.Quantize(int8, scale="token")),
        ]
    )


def test_input_quantizers_round_trip(tmp_path):
    model = quantized(0)
    x = INPUTS.reshape(8, -1)[:, :6]
    model(x, training=True)  # a learned scale starts from a training batch
    path = save(model, tmp_path / "m.safetensors")
    recorded = json.loads(metadata(path)["snapset.quantizers"])
    assert [record["scale"] for record in recorded.values()] == [None, "tensor", "channel", "token"]
    twin = load(quantized(1, "flip"), path)
    assert_same_outputs(model, twin, x)
    assert_same_exact_weights(model, twin)
    for layer, twin_layer in zip(model.layers[1:3], twin.layers[1:3], strict=True):
        np.testing.assert_array_equal(twin_layer.input_quantizer.alpha, layer.input_quantizer.alpha)


# ----- hardened models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{"scale": "channel"}, {"scale": 2, "scale_mode": "absmean"}], ids=str
)
def test_a_hardened_scaled_model_saves_packed_with_its_scales(options, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), sk.Dense(4, snapset.Ternary(), name="d", **options)]
    )
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    before = model.predict(x, verbose=0)
    constrained_file = save(model, tmp_path / "c.safetensors")
    hardened_file = save(sk.harden_(model), tmp_path / "h.safetensors")
    described = json.loads(metadata(hardened_file)["snapset.constrained"])["d.weight"]
    assert described["method"] == "hardened" and "scale" in described
    # the same codes and scales as the model saved before hardening
    for name, value in load(None, constrained_file).items():
        np.testing.assert_array_equal(load(None, hardened_file)[name], value)
    # a plain twin takes them, is marked with them, and saves them packed again
    twin = load(
        keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")]), hardened_file
    )
    assert np.array_equal(twin.predict(x, verbose=0), before)
    assert sk.summary(twin).rows[0].method == "hardened"
    again = json.loads(metadata(save(twin, tmp_path / "a.safetensors"))["snapset.constrained"])
    assert again["d.weight"]["scale"] == described["scale"]


@pytest.mark.parametrize("method", ["ste", "gumbel"])
def test_a_hardened_model_saves_packed(method, tmp_path):
    model = constrained(FOUR, method)
    exact = sk.exact_weights(model)
    sk.harden_(model)
    path = save(model, tmp_path / "m.safetensors")
    described = json.loads(metadata(path)["snapset.constrained"])
    assert len(described) == 4 and {spec["method"] for spec in described.values()} == {"hardened"}
    twin = load(constrained(FOUR, "ste", seed=1), path)
    assert_same_outputs(model, twin)
    for value, twin_value in zip(exact.values(), sk.exact_weights(twin).values(), strict=True):
        np.testing.assert_array_equal(twin_value, value)
    assert_same_outputs(model, load(plain(FOUR), path))


def test_a_hardened_weight_that_left_its_set_saves_as_it_is(tmp_path):
    model = sk.harden_(constrained(FOUR, "ste"))
    dense = model.layers[-2]
    kernel = dense.get_weights()[0]
    kernel[0, 0] = 0.25
    dense.set_weights([kernel, dense.get_weights()[1]])
    path = save(model, tmp_path / "m.safetensors")
    described = json.loads(metadata(path)["snapset.constrained"])
    assert "dense.weight" not in described and len(described) == 3
    np.testing.assert_array_equal(load(None, path)["dense.weight"], kernel.T)


# ----- across fronts --------------------------------------------------------------------------
# The same network in both: a convolution (1-d or 2-d), BatchNormalization with PyTorch's
# epsilon and momentum, global average pooling (then the order of the channels cannot matter),
# a dense layer with an input quantizer, a plain dense head.

SCALES = {"unscaled": {}, "channel": {"scale": "channel"}, "group2": {"scale": 2}}
INT8 = snapset.ValueSet(range(-128, 128))
QUANTIZERS = {
    "sign": {"values": snapset.Sign()},
    "learned tensor": {"values": snapset.Ternary(), "scale": "tensor", "scale_mode": "learned"},
    "learned channel": {"values": INT8, "scale": "channel", "scale_mode": "learned"},
    "token absmax": {"values": INT8, "scale": "token"},
    "channel absmax": {"values": snapset.Ternary(), "scale": "channel"},
    "static": {"values": FOUR, "scale": 0.25},
}


def keras_net(rank, values, seed, quantizer=None, method="ste", **scale):
    """The network in Keras: snapset layers with ``values`` (Keras's own with ``None``)."""
    keras.utils.set_random_seed(seed)
    shape, pooling = ((10, 4), keras.layers.GlobalAveragePooling1D)
    if rank == 2:
        shape, pooling = ((6, 6, 4), keras.layers.GlobalAveragePooling2D)
    if values is None:
        conv = (keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D)(6, 3, name="conv")
        dense = keras.layers.Dense(4, name="dense")
    else:
        conv_class = sk.Conv1D if rank == 1 else sk.Conv2D
        conv = conv_class(6, 3, values, method, name="conv", **scale)
        quantize = None if quantizer is None else sk.Quantize(**quantizer)
        dense = sk.Dense(4, values, method, input_quantizer=quantize, name="dense", **scale)
    return keras.Sequential(
        [
            keras.Input(shape),
            conv,
            keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9),
            keras.layers.ReLU(),
            pooling(),
            keras.layers.Flatten(),
            dense,
            keras.layers.Dense(3, name="head"),
        ]
    )


def torch_net(rank, values, seed, quantizer=None, **scale):
    """The network in PyTorch, its conv and first linear layer constrained to ``values`` (plain
    with ``None``), the linear layer's input quantized as ``quantizer`` says."""
    torch.manual_seed(seed)
    nn = torch.nn
    conv, norm, pool = nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), nn.AdaptiveAvgPool1d(1)
    if rank == 2:
        conv, norm, pool = nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1)
    net = nn.Sequential(conv, norm, nn.ReLU(), pool, nn.Flatten(), nn.Linear(6, 4), nn.Linear(4, 3))
    if values is not None:
        for layer in (net[0], net[5]):
            st.constrain(layer, "weight", values, "ste", **scale)
    if quantizer is not None:
        options = dict(quantizer)
        if options.get("scale") == "channel" and options.get("scale_mode") == "learned":
            options["num_features"] = 6
        quantize = st.Quantize(options.pop("values"), **options)
        st.quantize_inputs_(net, quantize, filter_fn=lambda module, name: name == "5")
    return net


def net_inputs(rank, seed=0):
    """A batch in Keras's layout (channels last) and the same in PyTorch's (channels first)."""
    shape = (16, 10, 4) if rank == 1 else (16, 6, 6, 4)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    return x, torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def torch_outputs(net, x):
    with torch.no_grad():
        return net.eval()(x).numpy()


def keras_layout(weight):
    """A PyTorch weight ``(out, in, *k)`` as a Keras kernel ``(*k, in, out)``."""
    return np.transpose(weight, (*range(2, weight.ndim), 1, 0))


def assert_fronts_agree(model, net, rank):
    """Outputs to float tolerance; the exact weights bit for bit, and the batch norm's state."""
    x, tx = net_inputs(rank, seed=1)
    np.testing.assert_allclose(
        torch_outputs(net, tx), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    layers = {layer.name: layer for layer in model.layers}
    for name, index in (("conv", 0), ("dense", 5)):
        weight = keras_layout(net[index].weight.detach().numpy())
        exact = sk.exact_weights(model).get(f"{name}/kernel")
        np.testing.assert_array_equal(
            weight, layers[name].get_weights()[0] if exact is None else exact
        )
    norm = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    for variable, tensor in zip(
        norm.weights,
        (net[1].weight, net[1].bias, net[1].running_mean, net[1].running_var),
        strict=True,
    ):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), tensor.detach().numpy())


def fitted(model, rank):
    """``model`` after two steps of Adam (moving statistics and learned scales move too)."""
    x, _ = net_inputs(rank)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, np.ones((16, 3), "float32"), batch_size=8, epochs=1, verbose=0)
    return model


def trained(net, rank):
    """``net`` after two steps of Adam in training mode (running statistics and learned
    scales move too), in eval mode."""
    _, tx = net_inputs(rank)
    optimizer = torch.optim.Adam(net.parameters(), 0.05)
    net.train()
    for batch in tx.split(8):
        optimizer.zero_grad()
        (net(batch) - 1).pow(2).mean().backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize("scale", SCALES, ids=SCALES)
@pytest.mark.parametrize("rank", [1, 2])
@needs_torch
def test_a_keras_model_loads_into_the_equivalent_torch_model(rank, scale, tmp_path):
    model = fitted(keras_net(rank, snapset.Ternary(), 0, **SCALES[scale]), rank)
    path = save(model, tmp_path / "m.safetensors")
    assert_fronts_agree(model, st.load(torch_net(rank, None, 1), path), rank)
    twin = torch_net(rank, snapset.Ternary(), 1, **SCALES[scale])
    assert_fronts_agree(model, st.load(twin, path), rank)


@pytest.mark.parametrize("scale", SCALES, ids=SCALES)
@pytest.mark.parametrize("rank", [1, 2])
@needs_torch
def test_a_torch_model_loads_into_the_equivalent_keras_model(rank, scale, tmp_path):
    net = trained(torch_net(rank, snapset.Ternary(), 0, **SCALES[scale]), rank)
    path = st.save(net, tmp_path / "m.safetensors")
    twin = keras_net(rank, snapset.Ternary(), 1, method="flip", **SCALES[scale])
    assert_fronts_agree(load(twin, path), net, rank)
    assert_fronts_agree(load(keras_net(rank, None, 1), path), net, rank)


@needs_torch
def test_plain_models_move_both_ways(tmp_path):
    model = fitted(keras_net(2, None, 0), 2)
    net = st.load(torch_net(2, None, 1), save(model, tmp_path / "k.safetensors"))
    assert_fronts_agree(model, net, 2)
    net = trained(torch_net(2, None, 2), 2)
    assert_fronts_agree(load(model, st.save(net, tmp_path / "t.safetensors")), net, 2)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@needs_torch
def test_input_quantizers_move_both_ways(quantizer, tmp_path):
    options = QUANTIZERS[quantizer]
    model = fitted(keras_net(1, snapset.Ternary(), 0, quantizer=options), 1)
    path = save(model, tmp_path / "k.safetensors")
    assert_fronts_agree(model, st.load(torch_net(1, None, 1), path), 1)  # put in by the load
    assert_fronts_agree(model, st.load(torch_net(1, snapset.Ternary(), 1, options), path), 1)
    net = trained(torch_net(1, snapset.Ternary(), 0, options), 1)
    path = st.save(net, tmp_path / "t.safetensors")
    assert_fronts_agree(load(keras_net(1, snapset.Ternary(), 1, options), path), net, 1)


# ----- refused ----------------------------------------------------------------------------------


def refused(model, path, match):
    """``load`` refuses the file with ``match`` in its message, and ``model`` is as it was."""
    before = snapshot(model)
    with pytest.raises(SnapsetFileError, match=match):
        load(model, path)
    assert_unchanged(model, before)


def dense_net(units=4, values=FOUR, method="ste", seed=0, quantizer=None, **scale):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            sk.Dense(units, values, method, input_quantizer=quantizer, name="dense", **scale),
            keras.layers.Dense(2, name="head"),
        ]
    )


def test_an_unbuilt_model_is_refused(tmp_path):
    unbuilt = keras.Sequential([sk.Dense(3, snapset.Sign()), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"not built yet.*call it on a batch"):
        save(unbuilt, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    path = save(dense_net(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"not built yet.*call it on a batch"):
        load(unbuilt, path)
    assert not unbuilt.built


def test_a_file_whose_layers_do_not_pair_is_refused(tmp_path):
    path = save(dense_net(), tmp_path / "m.safetensors")
    keras.utils.set_random_seed(1)
    conv = keras.Sequential(
        [keras.Input((6, 1)), sk.Conv1D(4, 3, FOUR), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    refused(conv, path, r"layer 1 is dense 'dense' in the file, conv1d '.*' in the model")
    longer = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2), keras.layers.Dense(2)]
    )
    refused(longer, path, "the file holds 2 layers with tensors")


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (lambda: dense_net(units=5), r"'dense.weight' has shape \[4, 6\] in the file but \[5, 6\]"),
        (lambda: dense_net(values=snapset.Ternary()), r"holds values of .* constrains it to"),
        (lambda: dense_net(scale="channel"), r"unscaled in the file but scaled"),
        (lambda: dense_net(quantizer=sk.Quantize(snapset.Sign())), "only the model has"),
    ],
    ids=["shape", "set", "scaled", "quantizer"],
)
def test_a_file_that_does_not_fit_is_refused(target, match, tmp_path):
    refused(target(), save(dense_net(), tmp_path / "m.safetensors"), match)


def test_scales_and_quantizers_must_match_the_file(tmp_path):
    scaled = save(dense_net(scale=2, seed=1), tmp_path / "scaled.safetensors")
    refused(dense_net(), scaled, r"is scaled .* in the file but unscaled in the model")
    refused(dense_net(scale="channel"), scaled, r"scale=2.* in the file but scaled .*'channel'")
    sign = sk.Quantize(snapset.Sign())
    quantized = save(dense_net(quantizer=sign), tmp_path / "quantized.safetensors")
    refused(dense_net(), quantized, "only the file has an input quantizer on 'dense'")
    ternary = sk.Quantize(snapset.Ternary(), estimator="identity")
    refused(
        dense_net(quantizer=ternary),
        quantized,
        r"differs from the model's in values \(\[-1.0, 1.0\] in the file, \[-1.0, 0.0, 1.0\]"
        r".*estimator \('clip' in the file, 'identity' in the model\)",
    )


def test_plain_values_load_into_a_constrained_model_only_if_members(tmp_path):
    keras.utils.set_random_seed(0)
    float_net = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, name="dense"), keras.layers.Dense(2)]
    )
    path = save(float_net, tmp_path / "m.safetensors")
    refused(dense_net(), path, "'dense.weight' is a plain tensor in the file with entries outside")
    # the same plain layers holding signs (as PyTorch accepts them): they load, exactly
    kernel = np.sign(float_net.layers[0].kernel.numpy() + 0.5).astype("float32")
    kernel[kernel == 0] = 1.0
    float_net.layers[0].kernel.assign(kernel)
    path = save(float_net, tmp_path / "signs.safetensors")
    model = load(dense_net(values=snapset.Sign()), path)
    np.testing.assert_array_equal(sk.exact_weights(model)["dense/kernel"], kernel)


def test_a_set_the_model_dtype_cannot_hold_is_refused(tmp_path):
    close = snapset.ValueSet([1, 1.0001])  # one value in float16
    path = save(dense_net(values=close), tmp_path / "m.safetensors")
    keras.utils.set_random_seed(1)
    half = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, dtype="float16", name="dense"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    refused(half, path, "tensor 'dense.weight'")


def test_damaged_and_newer_files_are_refused(tmp_path):
    path = save(dense_net(quantizer=sk.Quantize(snapset.Sign())), tmp_path / "m.safetensors")
    data = path.read_bytes()
    target = dense_net(seed=1, quantizer=sk.Quantize(snapset.Sign()))
    for cut in (4, 100, len(data) - 1):
        path.write_bytes(data[:cut])
        refused(target, path, r"too short|truncated|cut short")
        with pytest.raises(SnapsetFileError):
            load(None, path)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"]["snapset.version"] = "3"
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])
    refused(target, path, r"format version '3'.*upgrade snapset")


def test_a_flip_weight_off_its_set_is_not_saved(tmp_path):
    model = dense_net(method="flip")
    kernel = model.layers[0].weights[0]
    kernel.assign(np.full(kernel.shape, 0.25, "float32"))  # as another optimizer would
    with pytest.raises(snapset.OutsideSetError, match=r"holds 24 values outside .*keras\.Bop"):
        save(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def overwrite(path, name, value):
    """Put ``value``'s bytes in place of the tensor ``name`` of the file at ``path``."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + length])[name]["data_offsets"]
    data[8 + length + start : 8 + length + end] = np.asarray(value).tobytes()
    path.write_bytes(bytes(data))


def test_a_subnormal_scale_loads_only_where_the_backend_holds_it(tmp_path):
    tiny = np.float32(1e-40)  # JAX computes with it as 0

    def check(model, twin, name, value, alpha):
        path = save(model, tmp_path / "m.safetensors")
        overwrite(path, name, value)
        before = snapshot(twin)
        try:
            load(twin, path)
        except SnapsetFileError as error:
            assert "this backend" in str(error)
            assert_unchanged(twin, before)
        else:
            assert alpha(twin) == tiny

    def weight_alpha(twin):
        return sk.scaled_parts(twin)["dense/kernel"][1]

    options = {"method": "flip", "scale": "tensor"}
    check(
        dense_net(**options),
        dense_net(seed=1, **options),
        "dense.weight.scales",
        np.full((1, 1), tiny),
        weight_alpha,
    )

    def quantized(seed):
        learned = sk.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
        return dense_net(quantizer=learned, seed=seed)

    def quantizer_alpha(twin):
        return twin.layers[0].input_quantizer.alpha

    check(quantized(0), quantized(1), "dense.input_quantizer.start", tiny, quantizer_alpha)


def test_a_huge_log_gain_is_refused_without_a_warning(tmp_path):
    quantizer = sk.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    path = save(dense_net(quantizer=quantizer), tmp_path / "m.safetensors")
    overwrite(path, "dense.input_quantizer.log_gain", np.float32(1000))
    twin = dense_net(quantizer=sk.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned"))
    refused(twin, path, "learned scales of the input quantizer of 'dense' hold 1 entry")


@needs_torch
def test_a_flatten_after_a_convolution_needs_the_channels_first(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5, 5, 4)),
            sk.Conv2D(3, 2, snapset.Sign()),
            keras.layers.Permute((3, 1, 2)),  # PyTorch's order: channels, then positions
            keras.layers.Flatten(),
            sk.Dense(2, snapset.Sign()),
        ]
    )
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 3, 2), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)
    )
    net = st.load(net, save(model, tmp_path / "m.safetensors"))
    x = np.random.default_rng(1).standard_normal((3, 5, 5, 4)).astype("float32")
    tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    np.testing.assert_allclose(
        torch_outputs(net, tx), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


@needs_torch
def test_a_file_from_the_other_front_whose_layers_differ_is_refused(tmp_path):
    net = torch_net(2, snapset.Ternary(), 0)
    path = st.save(net, tmp_path / "t.safetensors")
    refused(keras_net(1, snapset.Ternary(), 1), path, r"layer 1 is conv2d '0' in the file, conv1d")
    model = keras_net(1, snapset.Ternary(), 0)
    path = save(model, tmp_path / "k.safetensors")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SnapsetFileError, match=r"layer 1 is conv1d 'conv' in the file, conv2d"):
        st.load(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@needs_torch
def test_a_convolution_input_quantizer_moves_both_ways(tmp_path):
    def keras_conv(seed):
        keras.utils.set_random_seed(seed)
        learned = sk.Quantize(INT8, scale="channel", scale_mode="learned")  # channels last
        return keras.Sequential(
            [
                keras.Input((10, 4)),
                sk.Conv1D(6, 3, snapset.Ternary(), input_quantizer=learned),
                keras.layers.GlobalAveragePooling1D(),
            ]
        )

    model = keras_conv(0)
    x, tx = net_inputs(1)
    model(x, training=True)  # the learned scale starts from a training batch
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 6, 3), torch.nn.AdaptiveAvgPool1d(1))
    net = st.load(net, save(model, tmp_path / "k.safetensors"))
    assert net[0].input_quantizer.feature_axis == 1  # PyTorch's channels
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(torch_outputs(net, tx)[..., 0], expected, rtol=1e-5, atol=1e-6)
    twin = load(keras_conv(1), st.save(net, tmp_path / "t.safetensors"))
    np.testing.assert_array_equal(twin.predict(x, verbose=0), expected)


def test_a_signalling_nan_is_refused_without_a_warning(tmp_path):
    path = save(dense_net(method="flip", scale="tensor"), tmp_path / "m.safetensors")
    overwrite(path, "dense.weight.scales", np.full((1, 1), 0x7FA00000, np.uint32))
    twin = dense_net(method="flip", scale="tensor", seed=1)
    refused(twin, path, "the scales of 'dense.weight' hold 1 entry that is not finite")
