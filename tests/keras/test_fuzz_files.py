"""A mutation fuzzer for ``.keras`` files of models with snapset layers (issue 13).

Files of every Keras method and several sets are mutated (config edits of the values, the
method and its options; weight edits to 0.3, NaN, infinity, 7, other shapes and dtypes; bit
flips and byte edits inside the weights; bit flips and truncation of the archive) and loaded.
Every case either raises (any exception: Keras's archive and h5 readers raise their own kinds)
or loads a model whose every snapset variable holds what its method may hold: members of the
set for ``flip``, finite latents for ``ste`` and ``stochastic``, in the shapes the config
gives. The default run is bounded and seeded; ``-m slow`` runs many more cases and prints the
kinds of outcome.
"""

from __future__ import annotations

import collections
import io
import json
import warnings
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

import snapset.keras as sk  # noqa: E402
from snapset.keras._methods import method_of  # noqa: E402

SETS = ([0, 1], [-1, 1], [-1, 0, 1], [1, -1, 0.5, -0.5], [0, 0.1, 0.7, 3])
BAD_ENTRIES = (0.3, np.nan, np.inf, -np.inf, 7.0, 1e30)


def model_for(method, values):
    return keras.Sequential(
        [
            keras.Input((6, 2)),
            sk.Conv1D(3, 2, values, method, name="conv"),
            keras.layers.Flatten(),
            sk.Dense(4, values, method, bias_values=[-1, 1], name="dense"),
            sk.Multiplier(values, method, name="mult"),
        ]
    )


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One saved file per (method, set): its bytes."""
    folder = tmp_path_factory.mktemp("originals")
    files = {}
    for method in sk.METHODS:
        for i, values in enumerate(SETS):
            keras.utils.set_random_seed(i)
            path = folder / f"{method}-{i}.keras"
            model_for(method, values).save(path)
            files[method, i] = path.read_bytes()
    return files


def unzip(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def edit_weights(files, rng):
    """Replace one snapset layer's dataset with entries off its set, or another shape/dtype."""
    import h5py

    source = h5py.File(io.BytesIO(files["model.weights.h5"]), "r")
    datasets = {}
    source.visititems(
        lambda name, item: (
            datasets.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    )
    source.close()
    keys = [k for k in datasets if "/vars/" in k and not k.endswith("snapset_meaning")]
    key = keys[rng.integers(len(keys))]
    value = np.array(datasets[key])
    kind = rng.integers(4)
    if kind == 0 and value.size:
        flat = value.reshape(-1).astype("float32")
        flat[rng.integers(flat.size)] = BAD_ENTRIES[rng.integers(len(BAD_ENTRIES))]
        value = flat.reshape(value.shape)
    elif kind == 1:
        value = np.concatenate([value.reshape(-1), value.reshape(-1)[:1]])
    elif kind == 2:
        value = value.astype(["float16", "int32", "float64"][rng.integers(3)])
    else:
        del datasets[key]
        value = None
    if value is not None:
        datasets[key] = value
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for name, data in datasets.items():
            h5.create_dataset(name, data=data)
    files["model.weights.h5"] = buffer.getvalue()


def edit_config(files, rng):
    config = json.loads(files["config.json"])
    layers = [
        layer["config"] for layer in config["config"]["layers"] if "values" in layer["config"]
    ]
    layer = layers[rng.integers(len(layers))]
    edits = {
        "values": lambda: SETS[rng.integers(len(SETS))],
        "method": lambda: [*sk.METHODS, None][rng.integers(len(sk.METHODS) + 1)],
        "latent_range": lambda: [0.1, 0.5, 1.0, -1.0][rng.integers(4)],
        "estimator": lambda: ["inward", "clip", "identity"][rng.integers(3)],
        "bias_values": lambda: [[-1, 1], [0, 1], [-1, 0, 1]][rng.integers(3)],
        "dtype": lambda: ["float32", "float16", "float64"][rng.integers(3)],
    }
    name = list(edits)[rng.integers(len(edits))]
    layer[name] = edits[name]()
    files["config.json"] = json.dumps(config).encode()


def flip_bits(data, rng, count):
    data = bytearray(data)
    for _ in range(count):
        position = rng.integers(len(data))
        data[position] ^= 1 << int(rng.integers(8))
    return bytes(data)


def mutate(data, rng):
    """One mutation of a saved file's bytes; returns (kind, new bytes)."""
    kind = ["weights", "config", "h5 bits", "archive bits", "truncation"][rng.integers(5)]
    if kind == "archive bits":
        return kind, flip_bits(data, rng, int(rng.integers(1, 4)))
    if kind == "truncation":
        return kind, data[: int(rng.integers(len(data)))]
    files = unzip(data)
    if kind == "weights":
        edit_weights(files, rng)
    elif kind == "config":
        edit_config(files, rng)
    else:
        files["model.weights.h5"] = flip_bits(files["model.weights.h5"], rng, 4)
    return kind, rezip(files)


def check_loaded(model):
    """Every snapset variable of ``model`` holds what its method may hold, in its shape."""
    for layer in model.layers:
        if not isinstance(layer, sk.SetLayer):
            continue
        for name, variable in layer._set_weights.items():
            method = method_of(variable)
            held = keras.ops.convert_to_numpy(variable)
            if method is None:
                continue  # a plain weight: its config says so, and no set claims it
            assert not method.outside(np.asarray(held)).any(), (layer.name, name, held)
            exact = layer.exact_weights()[name]
            assert set(np.unique(exact).tolist()) <= set(method.tables.values), (layer.name, name)


SNAPSET_REFUSALS = {
    "outside": "snapset: values",
    "non-finite": "snapset: values",
    "config now makes them": "snapset: edited config",
    "the incoming array has shape": "snapset: shape",
    "its weights mean is damaged": "snapset: damaged record",
}


def refusal(error):
    """Which check refused a file: one of snapset's, or the kind of Keras's or h5py's error."""
    message = str(error)
    for phrase, reason in SNAPSET_REFUSALS.items():
        if phrase in message:
            return reason
    return type(error).__name__


def fuzz(originals, cases, seed, tmp_path):
    """Run ``cases`` mutations; return the counts of outcomes by (mutation, outcome)."""
    rng = np.random.default_rng(seed)
    keys = sorted(originals)
    outcomes = collections.Counter()
    path = tmp_path / "case.keras"
    for _ in range(cases):
        key = keys[rng.integers(len(keys))]
        kind, data = mutate(originals[key], rng)
        path.write_bytes(data)
        # A warning (Keras warns, for one, when a file's optimizer state does not fit) must not
        # stand for a refusal: what loads with a warning is checked too.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                model = keras.saving.load_model(path)
            except Exception as error:  # any refusal is fine; what loads is checked below
                outcomes[kind, refusal(error)] += 1
                continue
        check_loaded(model)
        outcomes[kind, "loaded"] += 1
    return outcomes


def test_mutated_files_load_in_their_sets_or_not_at_all(originals, tmp_path):
    outcomes = fuzz(originals, 100, seed=0, tmp_path=tmp_path)
    assert sum(outcomes.values()) == 100
    # The fuzzer reaches both ends: files refused by snapset's checks, and files that load.
    assert any(reason.startswith("snapset") for _, reason in outcomes)
    assert any(reason == "loaded" for _, reason in outcomes)


@pytest.mark.slow
def test_many_mutated_files_load_in_their_sets_or_not_at_all(originals, tmp_path):
    outcomes = fuzz(originals, 1000, seed=1, tmp_path=tmp_path)
    for (kind, reason), count in sorted(outcomes.items()):
        print(f"{kind:14} {reason:28} {count}")
    assert sum(outcomes.values()) == 1000


def test_the_record_stops_a_values_edit_the_stored_weights_would_survive(
    originals, archive, tmp_path
):
    """The case the values check alone misses: a flip file over {-1, 1} relabelled {-1, 0, 1}."""
    path = tmp_path / "relabelled.keras"
    path.write_bytes(originals["flip", 1])
    file = archive(path)
    file.layer_config("mult")["values"] = [-1, 0, 1]
    with pytest.raises(ValueError, match="config now makes them"):
        keras.saving.load_model(file.write(path))
