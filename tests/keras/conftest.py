"""The Keras tests run once per backend (KERAS_BACKEND). Each module skips itself where Keras is
absent (pytest.importorskip), so nothing here imports Keras at load time."""

import numpy as np
import pytest


def _backend():
    import keras

    return keras.backend.backend()


def variable_grads(layer, inputs, upstream, training=False):
    """Gradients of ``sum(layer(inputs) * upstream)`` with respect to ``layer``'s trainable
    variables, as numpy arrays, on whichever backend runs."""
    inputs = np.asarray(inputs, "float32")
    upstream = np.asarray(upstream, "float32")
    variables = layer.trainable_variables
    if _backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs, training=training) * upstream)
        return [np.asarray(g) for g in tape.gradient(loss, variables)]
    if _backend() == "torch":
        import torch

        for v in variables:
            v.value.grad = None
        output = layer(inputs, training=training)
        (output * torch.as_tensor(upstream, device=output.device)).sum().backward()
        return [v.value.grad.cpu().numpy() for v in variables]
    import jax
    import jax.numpy as jnp

    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(values):
        output, _ = layer.stateless_call(values, fixed, inputs, training=training)
        return jnp.sum(output * upstream)

    return [np.asarray(g) for g in jax.grad(loss)([v.value for v in variables])]


def function_grad(fn, x, upstream):
    """``(fn(x), d sum(fn(x) * upstream) / dx)`` as numpy arrays, on whichever backend runs."""
    x = np.asarray(x, "float32")
    upstream = np.asarray(upstream, "float32")
    if _backend() == "tensorflow":
        import tensorflow as tf

        tx = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tx)
            y = fn(tx)
            loss = tf.reduce_sum(y * upstream)
        return np.asarray(y), np.asarray(tape.gradient(loss, tx))
    if _backend() == "torch":
        import torch

        tx = torch.tensor(x, requires_grad=True)
        y = fn(tx)
        (y * torch.as_tensor(upstream)).sum().backward()
        return y.detach().numpy(), tx.grad.numpy()
    import jax
    import jax.numpy as jnp

    y, vjp = jax.vjp(fn, jnp.asarray(x))
    return np.asarray(y), np.asarray(vjp(jnp.asarray(upstream))[0])


@pytest.fixture
def grads():
    return variable_grads


@pytest.fixture
def fgrad():
    return function_grad


@pytest.fixture
def mixed_model():
    """A factory: a model with each of snapset's layers (a set-valued bias too), all built with
    one method; its inputs are ``(batch, 12, 3)``, its outputs ``(batch, 5)``."""
    import keras

    import snapset
    import snapset.keras as sk

    def make(method):
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((12, 3)),
                sk.Conv1D(4, 3, [1, -1, 0.5, -0.5], method, padding="same", name="conv1d"),
                keras.layers.Reshape((6, 2, 4)),
                sk.Conv2D(3, 2, snapset.Ternary(), method, name="conv2d"),
                keras.layers.Flatten(),
                sk.Dense(5, snapset.Binary(), method, bias_values=[-1, 1], name="dense"),
                sk.Multiplier(snapset.Sign(), method, name="multiplier"),
            ]
        )

    return make


@pytest.fixture
def mixed_inputs():
    """A batch of 16 inputs for ``mixed_model``."""
    return np.random.default_rng(0).standard_normal((16, 12, 3)).astype("float32")


@pytest.fixture(autouse=True)
def _seed():
    try:
        import keras
    except ImportError:  # test_keras_import runs without Keras too
        return
    keras.utils.set_random_seed(0)


class KerasArchive:
    """A ``.keras`` file taken apart for editing: its config (a dict) and its weights (h5
    dataset path -> numpy array), written back by ``write``."""

    def __init__(self, path):
        import io
        import json
        import zipfile

        import h5py

        with zipfile.ZipFile(path) as archive:
            self.files = {name: archive.read(name) for name in archive.namelist()}
        self.config = json.loads(self.files["config.json"])
        self.weights = {}
        with h5py.File(io.BytesIO(self.files["model.weights.h5"]), "r") as h5:
            h5.visititems(
                lambda name, item: (
                    self.weights.__setitem__(name, item[()])
                    if isinstance(item, h5py.Dataset)
                    else None
                )
            )

    def layer_config(self, name):
        """The config of the model's layer ``name`` (edited in place)."""
        for layer in self.config["config"]["layers"]:
            if layer["config"].get("name") == name:
                return layer["config"]
        raise KeyError(name)

    def write(self, path):
        import io
        import json
        import zipfile

        import h5py

        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as h5:
            for name, value in self.weights.items():
                h5.create_dataset(name, data=value)
        files = dict(self.files)
        files["config.json"] = json.dumps(self.config).encode()
        files["model.weights.h5"] = buffer.getvalue()
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path


@pytest.fixture
def archive():
    """``KerasArchive``: open a ``.keras`` file for editing."""
    return KerasArchive


def flip_layer(values, start):
    """A built flip ``sk.Multiplier`` over ``values`` holding ``start``."""
    import snapset.keras as sk

    layer = sk.Multiplier(values, "flip")
    layer.build((None, len(start)))
    layer.weights[0].assign(np.asarray(start, "float32"))
    return layer


def planted_multiplier(values, seed=3, features=64, samples=2048, noise=0.1):
    """``(w, x, y)`` with ``w`` drawn from ``values`` and ``y = x * w + noise``."""
    rng = np.random.default_rng(seed)
    planted = np.asarray(values.values, "float32")[rng.integers(0, len(values), features)]
    x = rng.standard_normal((samples, features)).astype("float32")
    y = (x * planted + noise * rng.standard_normal((samples, features))).astype("float32")
    return planted, x, y
