"""Mutation fuzzing of snapset files loaded by the Keras front: whole and exact, or not at all.

Files that ``snapset.keras.save`` writes (every method, four sets, half-precision dtypes,
hardened models, set-valued biases, scaled sets, input quantizers, a BatchNormalization with
its int64 ``num_batches_tracked``) are damaged: bit flips, truncation, byte edits, header-length
edits, tensor data overwritten, and structured edits of the JSON header (entries' dtypes,
shapes and offsets, the packed tensors' descriptions and scales, the quantizer records, the
layer list, the version). Each is loaded into a Keras model of the same architecture and into a
dict. Every case either raises ``SnapsetFileError`` with every variable of the model as it was,
or loads values that its methods may hold (flip variables members of their sets, latents and
logits finite, learned scales finite and > 0), packed tensors in the dict members of their sets
(times their scales). Cases are seeded: case ``i`` of seed ``s`` is the same file everywhere.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from functools import cache

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset._files import SnapsetFileError  # noqa: E402
from snapset.keras._constrain import constrained_variables  # noqa: E402
from snapset.keras._methods import checked_numpy  # noqa: E402
from snapset.keras.export import load, save  # noqa: E402

SETS = {
    "binary": snapset.Binary(),
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "five": snapset.ValueSet([-0.3, -0.1, 0, 0.2, 0.7]),  # not exact in any float dtype
}
INPUTS = np.random.default_rng(0).standard_normal((4, 6, 2)).astype("float32")


def net(values, method, dtype=None, quantizers=False, **scale):
    """A Conv1D, a BatchNormalization, a Dense with a set-valued bias, a Multiplier; with
    ``quantizers``, input quantizers with learned scales (per channel on the convolution, per
    tensor on the dense layer)."""
    int8 = snapset.ValueSet(range(-128, 128))

    def quantizer(**options):
        return sk.Quantize(int8, **options) if quantizers else None

    learned = {"scale_mode": "learned"}
    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            sk.Conv1D(
                4,
                2,
                values,
                method,
                name="conv",
                dtype=dtype,
                input_quantizer=quantizer(scale="channel", **learned),
                **scale,
            ),
            keras.layers.BatchNormalization(name="norm", dtype=dtype),
            keras.layers.Flatten(),
            sk.Dense(
                4,
                values,
                method,
                bias_values=[-1, 1],
                name="dense",
                dtype=dtype,
                input_quantizer=quantizer(scale="tensor", **learned),
                **scale,
            ),
            sk.Multiplier(values, method, name="mult", dtype=dtype),
        ]
    )
    if quantizers:
        model(INPUTS, training=True)  # a learned scale starts from a training batch
    return model


def hardened(values):
    return sk.harden_(net(values, "ste"))


def pair(name):
    """The config ``"<method>/<set>"`` (``hardened``: made plain by ``harden_``)."""
    method, values = name.split("/")
    if method == "hardened":
        return lambda: hardened(SETS[values])
    return lambda: net(SETS[values], method)


# Each method with two sets, each set with two methods (a Keras model is slow to build).
PAIRS = ("ste/binary", "ste/five", "stochastic/sign", "stochastic/ternary", "gumbel/ternary")
PAIRS += ("gumbel/five", "flip/binary", "flip/sign", "hardened/sign", "hardened/five")
CONFIGS = {
    **{name: pair(name) for name in PAIRS},
    "ste/four/float16": lambda: net([1, -1, 0.5, -0.5], "ste", "float16"),
    "flip/ternary/bfloat16": lambda: net(snapset.Ternary(), "flip", "bfloat16"),
    "ste/ternary/channel": lambda: net(snapset.Ternary(), "ste", scale="channel"),
    "flip/sign/tensor": lambda: net(snapset.Sign(), "flip", scale="tensor"),
    "stochastic/sign/absmax": lambda: net(
        snapset.Sign(), "stochastic", scale=2, scale_mode="absmax"
    ),
    "quantizers": lambda: net(snapset.Ternary(), "gumbel", quantizers=True),
}
# The configs with new fields (scales, quantizer records) are drawn more often than the others.
WEIGHTS = {name: 4 if "/" not in name or name.count("/") == 2 else 1 for name in CONFIGS}


@cache
def model(name: str, seed: int):
    """The model of config ``name`` built from ``seed``, once a process (seed 1: the target
    of the loads, which a refused load leaves as it was and a load leaves in its sets)."""
    keras.utils.set_random_seed(seed)
    return CONFIGS[name]()


@cache
def saved(name: str, folder: str) -> bytes:
    path = save(model(name, 0), f"{folder}/{name.replace('/', '-')}.safetensors")
    return path.read_bytes()


# ----- mutations ------------------------------------------------------------------------------


def split(data):
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header, rest):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + rest


def flip_bits(rng, data):
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 8))):
        position = rng.randrange(len(out) * 8)
        out[position // 8] ^= 1 << (position % 8)
    return bytes(out)


def truncate(rng, data):
    return data[: rng.randrange(len(data))]


def edit_bytes(rng, data):
    out = bytearray(data)
    at = rng.randrange(len(out))
    run = rng.randbytes(rng.choice((1, 4, 16)))
    kind = rng.randrange(3)
    if kind == 0:
        out[at : at + len(run)] = run[: len(out) - at]
    elif kind == 1:
        out[at:at] = run
    else:
        del out[at : at + len(run)]
    return bytes(out)


def edit_header_length(rng, data):
    length = int.from_bytes(data[:8], "little")
    claimed = rng.choice((length + rng.randint(-9, 9), 0, 2**63, len(data)))
    return max(claimed, 0).to_bytes(8, "little") + data[8:]


def edit_data(rng, data):
    """Overwrite one tensor's bytes (codes, scales, plain values, quantizer state)."""
    header, rest = split(data)
    start, end = header[rng.choice([n for n in header if n != "__metadata__"])]["data_offsets"]
    out = bytearray(rest)
    fill = rng.choice((b"\xff", b"\x00", b"\x7f", b"\x02"))
    out[start:end] = fill * (end - start) if rng.random() < 0.5 else rng.randbytes(end - start)
    return data[: len(data) - len(rest)] + bytes(out)


def odd(rng):
    """A JSON value of a kind or size no writer puts there."""
    return rng.choice((-1, 0, 2**64, 10**400, 0.5, 1e308, "x", "", None, True, [], {}, [1, [2]]))


def edit_list(rng, values):
    kind = rng.randrange(6)
    if kind == 0:
        return values[:-1]
    if kind == 1:
        return [*values, rng.choice((2.5, 1e30, 1.001, *values[:1]))]  # [:1]: a duplicate
    if kind == 2:
        return list(reversed(values))
    if kind == 3:
        return [v * rng.choice((1e-40, 1e30, -1, 3)) for v in values]
    if kind == 4 and values:
        i = rng.randrange(len(values))
        return [*values[:i], odd(rng), *values[i + 1 :]]
    return odd(rng)


def edit_object(rng, record, fields):
    """One field of a JSON object edited (from ``fields``: field -> new value), dropped, or an
    extra one; or the whole replaced."""
    if not isinstance(record, dict) or rng.random() < 0.05:
        return odd(rng)
    record = dict(record)
    kind = rng.randrange(10)
    if kind == 0 and record:
        del record[rng.choice(sorted(record))]
    elif kind == 1:
        record["extra"] = odd(rng)
    else:
        field = rng.choice(sorted(fields))
        record[field] = fields[field](rng, record.get(field))
    return record


PACKED = {
    "values": edit_list,
    "shape": lambda rng, shape: edit_list(rng, shape) if rng.random() < 0.7 else shape[::-1],
    "dtype": lambda rng, _: rng.choice(("float32", "float16", "bfloat16", "float64", "int8")),
    "method": lambda rng, _: rng.choice(("ste", "flip", "hardened", "new", odd(rng))),
    "group": lambda rng, group: rng.choice((group + 1, group - 1, 0, 1, 2**70)),
    "scale": lambda rng, scale: edit_object(rng, scale or {}, SCALE),
}
SCALE = {
    "granularity": lambda rng, _: rng.choice(("tensor", "channel", "token", 1, 2, 3, 0, 2.0)),
    "mode": lambda rng, _: rng.choice(("learned", "absmean", "absmax", "static", odd(rng))),
}
QUANTIZER = {
    "values": edit_list,
    "method": lambda rng, _: rng.choice(("ste", "stochastic", "flip", odd(rng))),
    "estimator": lambda rng, _: rng.choice(("clip", "identity", "x", odd(rng))),
    "scale": lambda rng, _: rng.choice(("tensor", "token", "channel", 0.5, -1.0, None)),
    "scale_mode": lambda rng, _: rng.choice(("absmax", "learned", None, odd(rng))),
    "feature_axis": lambda rng, _: rng.choice((0, 1, -1, -2, 65, odd(rng))),
    "num_features": lambda rng, _: rng.choice((None, 2, 3, 4, 2**62, odd(rng))),
    "dtype": lambda rng, _: rng.choice(("float32", "float16", "int8", odd(rng))),
}
LAYER = {
    "name": lambda rng, name: rng.choice(("renamed", "", "dense", "conv", f"{name}.x", odd(rng))),
    "kind": lambda rng, _: rng.choice(("dense", "conv1d", "conv2d", "batchnorm", "", odd(rng))),
}
ENTRY = {
    "dtype": lambda rng, _: rng.choice(("F64", "F32", "F16", "BF16", "I32", "U8", "BOOL", "x")),
    "shape": lambda rng, shape: edit_list(rng, shape) if rng.random() < 0.7 else shape[::-1],
    "data_offsets": lambda rng, offsets: rng.choice(
        (offsets[::-1], [o + 1 for o in offsets], [offsets[0], offsets[1] + 8], [0, 2**64])
    ),
}


def edit_json_text(rng, text, edit):
    """An edit of a metadata field that holds JSON text: broken text, or ``edit`` of its
    parsed value."""
    if rng.random() < 0.1:
        return rng.choice(("", "{", "[]", "null", "[" * 100_000, odd(rng)))
    return json.dumps(edit(json.loads(text)))


def edit_named(rng, named, fields):
    """An entry of a JSON object of records renamed, dropped, or its record edited."""
    if not named:
        return named
    name = rng.choice(sorted(named))
    kind = rng.randrange(5)
    if kind == 0:
        named[rng.choice(("dense", "conv", "mult.weight", "", "x"))] = named.pop(name)
    elif kind == 1:
        del named[name]
    else:
        named[name] = edit_object(rng, named[name], fields)
    return named


def edit_layers(rng, layers):
    if not layers or rng.random() < 0.3:
        rng.shuffle(layers)
        return layers[: rng.randrange(len(layers) + 1)]
    i = rng.randrange(len(layers))
    layers[i] = edit_object(rng, layers[i], LAYER)
    return layers


def edit_metadata(rng, metadata):
    field = rng.choice(("constrained",) * 4 + ("quantizers",) * 2 + ("layers", "version", "odd"))
    if field == "odd":
        return odd(rng)
    if field == "version":
        metadata["snapset.version"] = rng.choice(("0", "1", "2", "3", "2.0", odd(rng)))
    elif field == "layers":
        metadata["snapset.layers"] = edit_json_text(
            rng, metadata["snapset.layers"], lambda layers: edit_layers(rng, layers)
        )
    else:
        key = f"snapset.{field}"
        fields = PACKED if field == "constrained" else QUANTIZER
        metadata[key] = edit_json_text(
            rng, metadata.get(key, "{}"), lambda named: edit_named(rng, named, fields)
        )
    return metadata


def edit_header(rng, data):
    """A structured edit of the JSON header, written back with its length right."""
    header, rest = split(data)
    if rng.random() < 0.6:
        header["__metadata__"] = edit_metadata(rng, header["__metadata__"])
    else:
        names = sorted(n for n in header if n != "__metadata__")
        name = rng.choice(names)
        if rng.random() < 0.2:  # an entry renamed or dropped
            header[rng.choice((f"{name}x", rng.choice(names)))] = header.pop(name)
        else:
            header[name] = edit_object(rng, header[name], ENTRY)
    return join(header, rest)


MUTATIONS = {
    flip_bits: 2,
    truncate: 1,
    edit_bytes: 2,
    edit_header_length: 1,
    edit_data: 3,
    edit_header: 9,
}


# ----- the oracle -----------------------------------------------------------------------------


def snapshot(target):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in target.variables]


def check_loaded(target):
    """Every constrained variable holds what its method may hold; what a file's quantizer state
    loads into is a finite scale > 0."""
    exact = sk.exact_weights(target)
    for key, variable, method in constrained_variables(target):
        checked_numpy(variable)  # members for flip, finite latents and logits, scales > 0
        if method.scale is None:
            table = method.values.tables(method.dtype).values
            assert np.isin(exact[key].astype(np.float64), table).all(), key
    for layer in target.layers:
        quantizer = getattr(layer, "input_quantizer", None)
        if quantizer is not None and quantizer.alpha is not None:
            alpha = np.asarray(quantizer.alpha, np.float64)
            assert (np.isfinite(alpha) & (alpha > 0)).all(), layer.name


def check_dict(loaded, data):
    header, _ = split(data)
    described = json.loads(header["__metadata__"].get("snapset.constrained", "{}"))
    for name, spec in described.items():
        value = loaded[name]
        assert list(value.shape) == spec["shape"], name
        if "scale" not in spec:
            table = snapset.ValueSet(spec["values"]).tables(spec["dtype"]).values
            assert np.isin(value.astype(np.float64), table).all(), name
        else:
            assert np.isfinite(value.astype(np.float64)).all(), name


def make_case(seed, index, folder):
    """The config and mutation of case ``index`` of ``seed``, and the damaged file's bytes."""
    rng = random.Random(f"{seed}:{index}")
    name = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
    mutation = rng.choices(list(MUTATIONS), list(MUTATIONS.values()))[0]
    return name, mutation.__name__, mutation(rng, saved(name, folder))


def run_case(name, data, folder):
    """Load a damaged file of config ``name`` into its target and into a dict; the outcomes
    (``loaded`` or ``refused``)."""
    path = f"{folder}/case.safetensors"
    with open(path, "wb") as handle:
        handle.write(data)
    target = model(name, 1)
    before = snapshot(target)
    outcomes = []
    try:
        load(target, path)
        check_loaded(target)
        outcomes.append("loaded")
    except SnapsetFileError:
        after = snapshot(target)
        assert all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(after, before, strict=True)
        ), "a refused load changed the model"
        outcomes.append("refused")
    try:
        check_dict(load(None, path), data)
        outcomes.append("loaded")
    except SnapsetFileError:
        outcomes.append("refused")
    return outcomes


def run(seed, cases, folder):
    """Counts of the outcomes (``model loaded``, ``dict refused``, ...) of ``cases``."""
    counts = Counter()
    for index in cases:
        name, mutation, data = make_case(seed, index, folder)
        try:
            outcomes = run_case(name, data, folder)
        except Exception as error:
            where = f"case {index} of seed {seed} ({name}, {mutation})"
            raise AssertionError(f"{where}: {error!r}"[:1000]) from error
        counts.update(
            f"{into} {outcome}" for into, outcome in zip(("model", "dict"), outcomes, strict=True)
        )
    return counts


# ----- the tests --------------------------------------------------------------------------------


def test_every_config_round_trips_unmutated(tmp_path):
    for name in CONFIGS:
        path = tmp_path / "m.safetensors"
        path.write_bytes(saved(name, str(tmp_path)))
        target = load(model(name, 1), path)
        check_loaded(target)
        outputs = [keras.ops.convert_to_numpy(m(INPUTS)) for m in (target, model(name, 0))]
        np.testing.assert_array_equal(*outputs)
        check_dict(load(None, path), path.read_bytes())


def test_mutated_files_load_in_their_sets_or_not_at_all(tmp_path):
    counts = run(0, range(200), str(tmp_path))
    assert counts["model loaded"] > 10 and counts["model refused"] > 100
    assert counts["dict loaded"] > 10


@pytest.mark.slow
def test_many_mutated_files_load_in_their_sets_or_not_at_all(tmp_path):
    counts = run(1, range(10_000), str(tmp_path))
    assert counts["model loaded"] > 100 and counts["model refused"] > 1000
