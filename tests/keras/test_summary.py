"""snapset.keras.summary: the table of snapset.torch.summary, for Keras models on every backend."""

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])


def numbers(row):
    return (row.values, row.method, *sizes(row))


def sizes(row):
    return (row.count, row.bits, row.packed_bytes)


def mixed_model():
    """Every method, a weight marked by constrain, a set-valued bias and Keras's own layers."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            sk.Conv2D(4, 3, snapset.Sign(), name="conv"),  # kernel (3, 3, 2, 4), float bias
            keras.layers.BatchNormalization(name="bn"),  # moving statistics: not parameters
            keras.layers.Flatten(),
            sk.Dense(5, snapset.Ternary(), "stochastic", bias_values=[-1, 1], name="d"),
            sk.Multiplier(FOUR, "flip", name="m"),
            sk.Dense(3, FOUR, "gumbel", use_bias=False, name="g"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    sk.constrain(model.get_layer("out"), "kernel", snapset.Binary())
    return model


def test_rows_by_hand():
    table = sk.summary(mixed_model())
    rows = {row.name: numbers(row) for row in table.rows}
    assert rows == {
        # 72 signs, 1 bit each: 9 bytes
        "conv/kernel": (snapset.Sign(), "ste", 72, 1, 9),
        "conv/bias": (None, "-", 4, 32, 16),
        "bn/gamma": (None, "-", 4, 32, 16),
        "bn/beta": (None, "-", 4, 32, 16),
        # 320 ternary codes: 11 groups of 29 in 46 bits, 1 of 1 in 2 bits: 64 bytes
        "d/kernel": (snapset.Ternary(), "stochastic", 320, 2, 64),
        "d/bias": (snapset.Sign(), "stochastic", 5, 1, 1),
        "m/kernel": (FOUR, "flip", 5, 2, 2),
        # the logits hold 5 x 3 x 4 numbers, the weight 15 entries: 30 bits, 4 bytes
        "g/kernel": (FOUR, "gumbel", 15, 2, 4),
        "out/kernel": (snapset.Binary(), "flip", 6, 1, 1),
        "out/bias": (None, "-", 2, 32, 8),
    }
    assert list(rows)[:4] == ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta"]  # model.weights
    assert (table.count, table.constrained_count) == (437, 423)
    assert (table.packed_bytes, table.float32_bytes) == (137, 4 * 437)
    text = str(table)
    assert "| d/kernel    | {-1, 0, 1}         | stochastic |   320 |        1.59 |" in text
    assert "423 of 437 weights (96.8%) in a value set; 137 B packed, 12.76x smaller" in text


def test_summary_counts_the_scales_as_gguf_counts_tq2_0():
    model = keras.Sequential(
        [keras.Input((512,)), sk.Dense(2, [-2, -1, 1, 2], scale=256, dtype="float16", name="d")]
    )
    (weight, bias) = sk.summary(model).rows
    assert (weight.name, bias.name) == ("d/kernel", "d/bias")  # alpha has no row of its own
    assert (weight.scale, weight.scale_count, weight.scale_bits) == ("256", 4, 16)
    assert weight.bits_per_weight == 2.0625  # 2 bits a code, a float16 scale per 256
    assert weight.packed_bytes == 1024 * 2 // 8 + 4 * 2
    assert bias.bits == 16


def test_summary_names_each_scale():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            sk.Dense(4, snapset.Ternary(), scale="channel", name="a"),
            sk.Dense(4, snapset.Sign(), scale=2, scale_mode="absmean", name="b"),
            sk.Dense(2, snapset.Sign(), name="c"),
        ]
    )
    text = str(sk.summary(model))
    assert "| {-1, 0, 1} x channel " in text and "| {-1, 1} x 2 absmean " in text
    rows = {row.name: row for row in sk.summary(model).rows}
    assert list(rows) == ["a/kernel", "a/bias", "b/kernel", "b/bias", "c/kernel", "c/bias"]
    assert (rows["a/kernel"].scale_count, rows["b/kernel"].scale_count) == (4, 8)
    assert rows["a/kernel"].bits_per_weight == pytest.approx(1.5862068965517242 + 4 * 32 / 32)
    assert rows["c/kernel"].scale is None


def test_hardened_weights_keep_their_sets():
    model = mixed_model()
    constrained = {row.name: (row.values, *sizes(row)) for row in sk.summary(model).rows}
    sk.harden_(model)
    hardened = sk.summary(model)
    # every weight keeps its set, a Keras Dense's that constrain marked too (as in PyTorch)
    assert {row.name: (row.values, *sizes(row)) for row in hardened.rows} == constrained
    methods = {row.name: row.method for row in hardened.rows if row.values is not None}
    assert set(methods) == {
        "conv/kernel",
        "d/kernel",
        "d/bias",
        "m/kernel",
        "g/kernel",
        "out/kernel",
    }
    assert set(methods.values()) == {"hardened"}
    conv = model.get_layer("conv")
    conv.set_weights([np.full((3, 3, 2, 4), 0.5, "float32"), conv.get_weights()[1]])
    assert {row.name: row.method for row in sk.summary(model).rows}["conv/kernel"] == "-"


def test_a_hardened_scaled_weight_keeps_its_set_and_scales():
    model = keras.Sequential([keras.Input((8,)), sk.Dense(4, snapset.Sign(), scale=4, name="d")])
    before = sk.summary(model).rows[0]
    assert before.scale == "4"
    row = sk.summary(sk.harden_(model)).rows[0]  # alpha * v, marked with its set and scales
    assert (row.name, row.values, row.method, row.scale) == (
        "d/kernel",
        snapset.Sign(),
        "hardened",
        "4",
    )
    assert row.packed_bytes == before.packed_bytes
    kernel = model.layers[0]._set_weights["kernel"]
    kernel.assign(kernel.numpy() * 1.5 + 0.25)  # no longer alpha * v: a plain row
    row = sk.summary(model).rows[0]
    assert (row.values, row.method, row.scale) == (None, "-", None)


def test_parameters_are_listed_and_state_is_not():
    frozen = keras.layers.Dense(2, name="frozen")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            sk.Dense(
                3,
                snapset.Sign(),
                input_quantizer=sk.Quantize(
                    snapset.Sign(), scale="tensor", scale_mode="learned", name="q"
                ),
                name="d",
            ),
            sk.Dense(3, snapset.Sign(), "stochastic", seed=1, name="s"),  # a seed generator
            keras.layers.BatchNormalization(name="bn"),
            frozen,
        ]
    )
    frozen.trainable = False  # still a parameter, as requires_grad=False in PyTorch
    names = [row.name for row in sk.summary(model).rows]
    assert names == [
        "d/kernel",
        "d/bias",
        "q/scale_log_gain",  # trained, as PyTorch's Quantize.log_gain
        "s/kernel",
        "s/bias",
        "bn/gamma",
        "bn/beta",
        "frozen/kernel",
        "frozen/bias",
    ]


@pytest.mark.parametrize(
    "layers",
    [[sk.Dense(2, snapset.Sign(), name="d")], [keras.layers.Dense(2, name="d")]],
    ids=["snapset layer", "keras layer"],
)
def test_an_unbuilt_model_is_refused(layers):
    model = keras.Sequential(layers)
    with pytest.raises(
        ValueError, match=r"not built yet, so it has no weights to count: call the model on"
    ):
        sk.summary(model)


def test_a_flip_variable_off_its_set_is_refused():
    model = keras.Sequential([keras.Input((3,)), sk.Multiplier(snapset.Sign(), "flip", name="m")])
    variable = model.get_layer("m").weights[0]
    variable.assign(np.array([1.0, 0.5, -1.0], "float32"))  # assign runs no constraint
    with pytest.raises(snapset.OutsideSetError, match=r"m/kernel' holds 1 value outside"):
        sk.summary(model)
    np.testing.assert_array_equal(variable.numpy(), [1.0, 0.5, -1.0])


# ----- the same architecture in both fronts --------------------------------------------------


def test_the_same_architecture_gives_the_same_table_in_both_fronts():
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("snapset.torch")
    nn = torch.nn
    scaled = {"scale": "tensor", "scale_mode": "learned"}
    reference = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 8),
        st.Multiplier(8, FOUR, "gumbel"), nn.Linear(8, 3),
    )  # fmt: skip
    st.constrain_(reference, snapset.Sign(), "flip", filter_fn=lambda m, _: m is reference[0])
    st.constrain(reference[2], "weight", snapset.Ternary(), scale="channel")
    st.constrain(
        reference[3], "weight", snapset.Sign(), "stochastic", scale=4, scale_mode="absmean"
    )
    st.quantize_inputs_(
        reference, st.Quantize(snapset.Sign(), **scaled), filter_fn=lambda m, _: m is reference[2]
    )
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            sk.Conv2D(4, 3, snapset.Sign(), "flip", name="c"),
            keras.layers.Flatten(),
            sk.Dense(
                8,
                snapset.Ternary(),
                scale="channel",
                input_quantizer=sk.Quantize(snapset.Sign(), **scaled, name="q"),
                name="a",
            ),
            sk.Dense(8, snapset.Sign(), "stochastic", scale=4, scale_mode="absmean", name="b"),
            sk.Multiplier(FOUR, "gumbel", name="m"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    torch_names = {
        "c/kernel": "0.weight",
        "c/bias": "0.bias",
        "a/kernel": "2.weight",
        "a/bias": "2.bias",
        "q/scale_log_gain": "2.input_quantizer.log_gain",
        "b/kernel": "3.weight",
        "b/bias": "3.bias",
        "m/kernel": "4.weight",
        "out/kernel": "5.weight",
        "out/bias": "5.bias",
    }
    expected = st.summary(reference)
    order = [row.name for row in expected.rows]
    renamed = [dataclasses.replace(r, name=torch_names[r.name]) for r in sk.summary(model).rows]
    table = sk.Summary(tuple(sorted(renamed, key=lambda row: order.index(row.name))))
    assert table == expected  # every field of every row, so every number derived from them
    assert str(table) == str(expected)
    assert (table.packed_bytes, table.compression) == (expected.packed_bytes, expected.compression)
