"""Exact means exact on every path (issue 13): a flip variable is never used, returned by
``exact_weights``, hardened or saved while outside its set; files and arrays load whole or not
at all; a non-finite gradient entry never reaches a latent."""

import h5py
import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

OFF_SET = np.array([0.3, np.nan, 7.0, 1.0], "float32")


def flip_model(values=(-1, 1), method="flip"):
    return keras.Sequential(
        [
            keras.Input((4,)),
            sk.Multiplier(list(values), method, name="m"),
            keras.layers.Dense(1, name="d"),
        ]
    )


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 4)).astype("float32"), np.ones((8, 1), "float32")


# ----- item 1: a flip variable written by something other than a flip optimizer -----------------


def test_fit_with_a_plain_optimizer_on_a_flip_layer_is_refused():
    model = flip_model()
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(TypeError, match=r"cannot step flip variable .*m/kernel.*Bop"):
        model.fit(*data(), verbose=0)


def test_an_eager_plain_step_is_refused_and_its_values_never_read():
    model = flip_model()
    kernel = model.layers[0].trainable_variables[0]
    with pytest.raises(TypeError, match="cannot step flip variable"):
        keras.optimizers.Adam(0.01).apply([keras.ops.ones((4,))], [kernel])
    # The eager step was written before the guard ran: every consumer refuses what it left.
    with pytest.raises(snapset.OutsideSetError, match="holds 4 values outside"):
        sk.exact_weights(model)


def test_router_and_bop_still_train_flip_layers():
    model = flip_model()
    model.compile(optimizer=sk.Router(flip=sk.Bop(1e-6, 0.5), default="adam"), loss="mse")
    before = sk.exact_weights(model)["m/kernel"]
    model.fit(*data(), epochs=3, verbose=0)
    after = sk.exact_weights(model)["m/kernel"]
    assert set(after.tolist()) <= {-1.0, 1.0} and not np.array_equal(before, after)


def assign_off_set(model):
    kernel = model.layers[0].trainable_variables[0]
    kernel.assign(OFF_SET)
    return kernel


def test_values_assigned_off_the_set_are_refused_by_every_eager_consumer(tmp_path):
    model = flip_model()
    assign_off_set(model)
    message = r"'.*m/kernel' holds 3 values outside ValueSet\(\[-1, 1\]\) \(for example 0.3\)"
    for consume in (
        lambda: sk.exact_weights(model),
        lambda: model.layers[0].exact_weights(),
        lambda: model.save(tmp_path / "m.keras"),
        lambda: model.save_weights(tmp_path / "m.weights.h5"),
        lambda: sk.Bop().build(model.layers[0].trainable_variables),
    ):
        with pytest.raises(snapset.OutsideSetError, match=message):
            consume()


def test_harden_refuses_values_off_the_set_and_changes_nothing():
    model = keras.Sequential(
        [keras.Input((4,)), sk.Dense(3, [0, 1], "ste", name="a"), sk.Multiplier([-1, 1], "flip")]
    )
    latent_before = model.layers[0].get_weights()[0].copy()
    model.layers[1].trainable_variables[0].assign(np.array([1, -1, 0.5], "float32"))
    with pytest.raises(snapset.OutsideSetError, match="holds 1 value outside"):
        sk.harden_(model)
    assert [layer.method for layer in model.layers] == ["ste", "flip"]
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], latent_before)
    with pytest.raises(snapset.OutsideSetError):
        model.layers[1].harden()
    assert model.layers[1].method == "flip"


def test_the_forward_pass_reads_entries_off_the_set_as_nan():
    model = flip_model()
    layer = model.layers[0]
    assign_off_set(model)
    outputs = keras.ops.convert_to_numpy(layer(np.ones((2, 4), "float32")))
    # Entry 3 holds 1, a member; the others (0.3, NaN, 7) are never computed with.
    assert np.isnan(outputs[:, :3]).all()
    np.testing.assert_array_equal(outputs[:, 3], [1.0, 1.0])
    predicted = model.predict(np.ones((2, 4), "float32"), verbose=0)
    assert np.isnan(predicted).all()


def test_flip_ratio_refuses_values_off_the_set():
    model = flip_model()
    model.compile(optimizer=sk.Router(flip=sk.Bop(), default="adam"), loss="mse")
    assign_off_set(model)
    with pytest.raises(snapset.OutsideSetError):
        model.fit(*data(), verbose=0, callbacks=[sk.FlipRatio()])


def test_constrain_refuses_a_weight_with_a_keras_constraint():
    dense = keras.layers.Dense(2, kernel_constraint="non_neg")
    dense.build((None, 3))
    with pytest.raises(ValueError, match="has a constraint"):
        sk.constrain(dense, "kernel", [0, 1])


def test_hardening_removes_the_guard():
    model = flip_model()
    sk.harden_(model)
    assert model.layers[0].trainable_variables[0].constraint is None


# ----- item 3: files and arrays load whole or not at all -----------------------------------------


def saved(tmp_path, model, name="model.keras"):
    path = tmp_path / name
    model.save(path)
    return path


def multiplier_key(archive):
    (key,) = [k for k in archive.weights if k.endswith("multiplier/vars/0")]
    return key


@pytest.mark.parametrize("method", sk.METHODS)
def test_a_file_whose_weights_leave_the_set_does_not_load(method, tmp_path, archive):
    file = archive(saved(tmp_path, flip_model(method=method)))
    nonfinite = np.array([0.01, np.nan, np.inf, 0.0], "float32")
    stores = sk.METHODS[method].spec.stores
    file.weights[multiplier_key(file)] = {
        "values": OFF_SET,
        "latent": nonfinite,
        "logits": np.stack([nonfinite, -nonfinite], axis=-1),  # one logit per value
    }[stores]
    path = file.write(tmp_path / "bad.keras")
    expected = (
        "values outside" if method == "flip" else f"non-finite \\(NaN or inf\\) {stores} entries"
    )
    # load_model wraps each layer's error in a ValueError that quotes it.
    with pytest.raises(ValueError, match=expected):
        keras.saving.load_model(path)
    # load_weights into a live model: refused, the snapset layer unchanged (Keras goes on to
    # load the other layers, then raises).
    model = flip_model(method=method)
    before = model.layers[0].get_weights()[0].copy()
    bad_weights = tmp_path / "bad.weights.h5"
    with h5py.File(bad_weights, "w") as h5:
        for name, value in archive(path).weights.items():
            h5.create_dataset(name, data=value)
    with pytest.raises(ValueError, match=expected):
        model.load_weights(bad_weights)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], before)


def test_a_file_with_a_wrong_shape_does_not_load(tmp_path, archive):
    file = archive(saved(tmp_path, flip_model()))
    file.weights[multiplier_key(file)] = np.ones(5, "float32")
    with pytest.raises(ValueError, match=r"has shape \(4,\); the incoming array has shape \(5,\)"):
        keras.saving.load_model(file.write(tmp_path / "bad.keras"))


@pytest.mark.parametrize(
    ("edit", "value"),
    [
        ("values", [-1, 0, 1]),  # every stored value is still a member: only the record tells
        ("method", "ste"),  # stored values read as latents
        ("latent_range", 0.5),  # latents on another scale
    ],
)
def test_an_edited_layer_config_does_not_reinterpret_the_stored_weights(
    edit, value, tmp_path, archive
):
    method = "ste" if edit == "latent_range" else "flip"
    file = archive(saved(tmp_path, flip_model(method=method)))
    file.layer_config("m")[edit] = value
    if edit == "method":
        file.layer_config("m")["latent_range"] = 0.1
        file.layer_config("m")["estimator"] = "inward"
    with pytest.raises(ValueError, match=r"config now makes them.*nothing was loaded"):
        keras.saving.load_model(file.write(tmp_path / "edited.keras"))


@pytest.mark.parametrize("record", [b"[" * 100_000, b"\xff\xfe", b'{"kernel": 1'])
def test_a_damaged_or_hostile_record_is_refused_with_a_value_error(record, tmp_path, archive):
    file = archive(saved(tmp_path, flip_model()))
    (key,) = [k for k in file.weights if k.endswith("snapset_meaning")]
    file.weights[key] = np.frombuffer(record, np.uint8)
    with pytest.raises(ValueError, match="its weights mean is damaged"):
        keras.saving.load_model(file.write(tmp_path / "hostile.keras"))


def test_files_without_the_record_still_load_and_are_checked(tmp_path, archive):
    model = flip_model()
    file = archive(saved(tmp_path, model))
    for key in [k for k in file.weights if k.endswith("snapset_meaning")]:
        del file.weights[key]
    loaded = keras.saving.load_model(file.write(tmp_path / "old.keras"))
    np.testing.assert_array_equal(
        sk.exact_weights(loaded)["m/kernel"], sk.exact_weights(model)["m/kernel"]
    )


def test_set_weights_refuses_values_off_the_set_and_changes_nothing():
    layer = flip_model().layers[0]
    before = layer.get_weights()[0].copy()
    with pytest.raises(snapset.OutsideSetError, match="as loaded holds 3 values outside"):
        layer.set_weights([OFF_SET])
    np.testing.assert_array_equal(layer.get_weights()[0], before)


def test_a_hardened_layer_keeps_its_record():
    layer = flip_model(method="ste").layers[0]
    layer.harden()
    assert layer._meaning() == {"kernel": None}


# ----- item 5: non-finite gradient entries never reach a latent -----------------------------------


@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_a_non_finite_gradient_entry_is_zeroed_before_the_latent(method, grads):
    layer = sk.Multiplier([-1, 1], method)
    layer.build((None, 4))
    upstream = np.array([[1.0, np.nan, np.inf, -np.inf]], "float32")
    (grad,) = grads(layer, np.ones((1, 4), "float32"), upstream, training=True)
    assert np.isfinite(grad).all()
    assert grad[0] != 0 and (grad[1:] == 0).all()


def test_adam_with_a_nan_gradient_entry_keeps_every_latent_finite():
    keras.utils.set_random_seed(0)

    class NanGradient(keras.layers.Layer):
        """Identity forward; the backward puts NaN into the first feature's gradient."""

        def call(self, inputs):
            @keras.ops.custom_gradient
            def forward(x):
                def grad(*args, upstream=None):
                    if upstream is None:
                        (upstream,) = args
                    poison = keras.ops.convert_to_tensor([np.nan, 0, 0, 0], upstream.dtype)
                    return upstream + poison

                return keras.ops.copy(x), grad

            return forward(inputs)

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="pre"), NanGradient(), sk.Dense(1, [-1, 1])]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(*data(), epochs=2, verbose=0)
    latent = model.layers[2].trainable_variables[0]
    assert np.isfinite(keras.ops.convert_to_numpy(latent)).all()


# ----- the property: whatever happens, nothing computes with or shows a value off the set --------

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

ACTIONS = ("fit", "forbidden step", "assign members", "assign anything", "round trip")


def in_set_or_refused(model, values):
    """The invariant: every eager reading holds members of the set (the forward pass may hold
    NaN in place of an entry off the set), or is refused with OutsideSetError."""
    members = set(values.tables("float32").values)
    layer = model.layers[0]
    used = keras.ops.convert_to_numpy(layer.set_value("kernel"))
    assert set(used[~np.isnan(used)].tolist()) <= members
    try:
        exact = sk.exact_weights(model)["m/kernel"]
    except snapset.OutsideSetError:
        return False
    assert set(exact.tolist()) <= members
    np.testing.assert_array_equal(used, exact)  # the forward pass uses exactly these
    return True


@pytest.mark.parametrize("method", sk.METHODS)
@hypothesis.settings(
    max_examples=4,
    deadline=None,
    derandomize=True,  # seeded: the same cases on every run
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # bounded: no shrinking
)
@hypothesis.given(
    values=st.lists(
        st.integers(-8, 8).map(lambda i: i / 4), min_size=2, max_size=5, unique=True
    ).map(snapset.ValueSet),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_no_reading_ever_holds_a_value_off_the_set(method, values, actions, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    model = flip_model(values.values, method)
    optimizer = sk.Router(flip=sk.Bop(1e-6, 0.5), default=keras.optimizers.Adam(0.05))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = data()
    model.train_on_batch(x, y)  # builds the optimizer, so that its state saves and loads
    for action in actions:
        kernel = model.layers[0].trainable_variables[0]
        if action == "fit":
            try:
                model.train_on_batch(x, y)
            except snapset.OutsideSetError:  # Bop refuses to start from values off the set
                assert not in_set_or_refused(model, values)
        elif action == "forbidden step" and method == "flip":
            with pytest.raises(TypeError, match="cannot step flip variable"):
                keras.optimizers.Adam(0.05).apply([keras.ops.ones((4,))], [kernel])
        elif action == "assign members":
            chosen = keras.ops.convert_to_tensor(rng.choice(values.values, 4), "float32")
            kernel.assign(sk.METHODS[method](values, "float32", "kernel").right_inverse(chosen))
        elif action == "assign anything":
            kernel.assign(rng.choice([0.3, np.nan, 7.0, *values.values], 4).astype("float32"))
        elif action == "round trip":
            path = tmp_path_factory.mktemp("round") / "m.keras"
            try:
                model.save(path)
            except snapset.OutsideSetError:
                assert not in_set_or_refused(model, values)
                continue
            model = keras.saving.load_model(path)
        in_set_or_refused(model, values)
    try:
        sk.harden_(model)
    except snapset.OutsideSetError:
        assert model.layers[0].method == method  # refused whole: nothing changed
    else:
        hard = model.layers[0].get_weights()[0]
        assert set(hard.tolist()) <= set(values.tables("float32").values)


def test_a_built_bop_leaves_entries_off_the_set_for_the_consumers_to_refuse():
    model = flip_model()
    model.compile(optimizer=sk.Router(flip=sk.Bop(0.0, 1.0), default="adam"), loss="mse")
    model.train_on_batch(*data())  # builds Bop on values in the set
    kernel = model.layers[0].trainable_variables[0]
    kernel.assign(np.array([0.3, -1, 1, 1], "float32"))
    model.optimizer.flip.apply([keras.ops.ones((4,))], [kernel])
    held = keras.ops.convert_to_numpy(kernel)
    np.testing.assert_array_equal(held, np.array([0.3, -1, -1, -1], "float32"))  # not moved
    with pytest.raises(snapset.OutsideSetError, match=r"for example 0\.3"):
        sk.exact_weights(model)
