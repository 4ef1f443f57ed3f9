"""Mutation fuzzing of snapset files: a damaged file loads whole and exact, or not at all.

Files are saved for every method (``ste``, ``stochastic``, ``gumbel``, ``flip``), four sets
(Binary, Sign, Ternary, a five-value list), four dtypes, hardened models, ``GF2Linear``
(trainable and hardened), scaled sets (learned and statistic scales, constrained and hardened)
and models with input quantizers, then damaged: bit flips, truncation, byte edits,
header-length edits and structured edits of the JSON header (shapes, dtypes, offsets, value
lists, groups, method names, scales, quantizer records, versions, nesting, huge numbers).
Every case must either load, with every packed value in its set (``alpha * v`` exactly, with
every scale finite and > 0, for a scaled one) and every tensor in its declared shape, or raise
``SnapsetFileError`` with the target model (its input quantizers too) unchanged; any other
exception, or a load that breaks a promise, fails.

Cases are seeded: case ``i`` of seed ``s`` is the same file on every machine. ``make test`` runs
a few hundred, the slow marker a few thousand; a large run prints its counts::

    .venv/bin/python tests/torch/export/test_fuzz_files.py --cases 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import snapset
import snapset.torch as st
from snapset.torch._constrain import hardened_scales, hardened_values, scaled_members

SETS = {
    "binary": snapset.Binary(),
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "five": snapset.ValueSet([-0.3, -0.1, 0, 0.2, 0.7]),  # not exact in any float dtype
}
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
METHODS = ("ste", "stochastic", "gumbel", "flip")


# ----- the files ------------------------------------------------------------------------------


def base_model(seed: int, dtype: torch.dtype) -> nn.Sequential:
    """Two Linear layers around a BatchNorm (float and int64 buffers) and a bool buffer."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(dtype)
    model.register_buffer("mask", torch.rand(4) > 0.5)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    return model.eval()


@dataclass(frozen=True)
class Config:
    """A kind of model whose file is fuzzed; ``build(seed)`` makes one (a load's target)."""

    name: str
    build: Callable[[int], nn.Module]
    #: How often a case draws it, against 1 for each of the many unscaled configs.
    weight: int = 1


def constrained(method: str, values: snapset.ValueSet, dtype: torch.dtype) -> Config:
    return Config(
        f"{method}/{values!r}/{dtype}",
        lambda seed: st.constrain_(base_model(seed, dtype), values, method),
    )


def hardened(values: snapset.ValueSet, dtype: torch.dtype) -> Config:
    return Config(
        f"hardened/{values!r}/{dtype}",
        lambda seed: st.harden_(st.constrain_(base_model(seed, dtype), values, "ste")),
    )


# Scales and quantizer records are drawn about a third of the time, though few configs hold them.
NEW_FIELDS = 8


def scaled(
    method: str, values: snapset.ValueSet, scale: str, mode: str | None, hard: bool = False
) -> Config:
    def build(seed: int) -> nn.Module:
        model = base_model(seed, torch.float32)
        model = st.constrain_(model, values, method, scale=scale, scale_mode=mode)
        return st.harden_(model) if hard else model

    kind = "hardened" if hard else method
    return Config(f"{kind}/{values!r}/scale={scale!r}/{mode}", build, NEW_FIELDS)


def quantized(seed: int) -> nn.Module:
    """Input quantizers of both kinds of state: a learned scale per channel, and none."""
    model = st.constrain_(base_model(seed, torch.float32), snapset.Ternary(), scale="tensor")
    learned = st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=6)
    st.quantize_inputs_(model, learned, filter_fn=lambda module, name: name == "0")
    token = st.Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
    st.quantize_inputs_(model, token, filter_fn=lambda module, name: name == "2")
    model.train()(torch.randn(4, 6))  # a learned scale starts from a training batch
    return model.eval()


def gf2(hard: bool) -> Config:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        layer = st.GF2Linear(12, 5).eval()
        return layer.harden_() if hard else layer

    return Config(f"GF2Linear{' hardened' if hard else ''}", build)


CONFIGS = (
    *(constrained(m, v, d) for m in METHODS for v in SETS.values() for d in DTYPES.values()),
    *(hardened(v, d) for v in SETS.values() for d in DTYPES.values()),
    gf2(hard=False),
    gf2(hard=True),
    scaled("ste", SETS["ternary"], "channel", None),
    scaled("flip", SETS["sign"], "tensor", None),
    scaled("stochastic", SETS["sign"], "channel", "absmax"),  # exact: max|alpha * v| = alpha
    scaled("gumbel", SETS["five"], "channel", None, hard=True),
    Config("input quantizers", quantized, NEW_FIELDS),
)


@cache
def saved(index: int) -> bytes:
    """The bytes of the file of ``CONFIGS[index]``'s model of seed 0, saved once a process."""
    with tempfile.TemporaryDirectory() as folder:
        return st.save(CONFIGS[index].build(0), Path(folder) / "m.safetensors").read_bytes()


# ----- mutations ------------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: str | bytes, rest: bytes) -> bytes:
    text = header.encode() if isinstance(header, str) else header
    return len(text).to_bytes(8, "little") + text + rest


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 8))):
        position = rng.randrange(len(out) * 8)
        out[position // 8] ^= 1 << (position % 8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def edit_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    at = rng.randrange(len(out))
    run = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 16))))
    kind = rng.choice(("overwrite", "insert", "delete"))
    if kind == "overwrite":
        out[at : at + len(run)] = run[: len(out) - at]
    elif kind == "insert":
        out[at:at] = run
    else:
        del out[at : at + len(run)]
    return bytes(out)


def edit_header_length(rng: random.Random, data: bytes) -> bytes:
    length = int.from_bytes(data[:8], "little")
    claimed = rng.choice((length + rng.randint(-9, 9), 0, 2**63, 2**64 - 1, len(data)))
    return max(claimed, 0).to_bytes(8, "little") + data[8:]


def edit_data(rng: random.Random, data: bytes) -> bytes:
    """Overwrite the data of one tensor (codes or plain values) with random or extreme bytes."""
    header, rest = split(data)
    name = rng.choice([n for n in header if n != "__metadata__"])
    start, end = header[name]["data_offsets"]
    fill = rng.choice((b"\xff", b"\x00", b"\x7f", b"\x02"))
    out = bytearray(rest)
    out[start:end] = fill * (end - start) if rng.random() < 0.5 else rng.randbytes(end - start)
    return data[: len(data) - len(rest)] + bytes(out)


def odd_value(rng: random.Random) -> Any:
    """A JSON value of a kind or size no writer puts there."""
    return rng.choice(
        (
            -1,
            0,
            1,
            2**31,
            2**64,
            10**400,
            0.5,
            1e308,
            float("nan"),
            float("inf"),
            "x",
            "",
            None,
            True,
            [],
            {},
            [1, [2]],
            {"a": 1},
            list(range(70)),
        )
    )


def edit_shape(rng: random.Random, shape: list[Any]) -> Any:
    kind = rng.randrange(7)
    if kind == 0 and shape:
        return shape[1:]  # a dimension fewer
    if kind == 1:
        return [*shape, 1]  # one more (same count)
    if kind == 2 and shape:
        i = rng.randrange(len(shape))
        return [*shape[:i], shape[i] + rng.choice((-1, 1)), *shape[i + 1 :]]
    if kind == 3:
        return list(reversed(shape))  # same count, another layout
    if kind == 4:
        return [1] * rng.choice((64, 65, 200)) + shape
    if kind == 5 and shape:
        i = rng.randrange(len(shape))
        return [*shape[:i], odd_value(rng), *shape[i + 1 :]]
    return odd_value(rng)


def edit_values(rng: random.Random, values: list[Any]) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return values[:-1]
    if kind == 1:
        return [*values, rng.choice((2.5, -7, 1e30, 1e-45, 65520.0, 1.001))]
    if kind == 2:
        return [*values, values[0]]  # a duplicate
    if kind == 3:
        return list(reversed(values))  # the same set, another order
    if kind == 4:
        return [v * rng.choice((1e-40, 1e30, 1e-8, -1, 3)) for v in values]
    if kind == 5:
        return [v + rng.choice((1e-4, 1e-9, 0.5)) for v in values]
    if kind == 6:
        i = rng.randrange(len(values))
        return [*values[:i], odd_value(rng), *values[i + 1 :]]
    if kind == 7:
        return [float(i) for i in range(rng.choice((1, 300, 70000)))]
    return odd_value(rng)


FLOAT_NAMES = ("float32", "float16", "bfloat16", "float64", "int8", "float8", "torch.float32")
TENSOR_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "f32")


def edit_packed(rng: random.Random, spec: Any) -> Any:
    """One edit of a packed tensor's description in ``snapset.constrained``."""
    if not isinstance(spec, dict) or rng.random() < 0.05:
        return odd_value(rng)
    spec = dict(spec)
    field = rng.choice(("values", "shape", "dtype", "method", "group", "drop", "add", "scale"))
    if field == "scale":
        spec["scale"] = edit_scale(rng, spec.get("scale"))
    elif field == "values":
        spec["values"] = edit_values(rng, spec["values"])
    elif field == "shape":
        spec["shape"] = edit_shape(rng, spec["shape"])
    elif field == "dtype":
        spec["dtype"] = rng.choice((*FLOAT_NAMES, odd_value(rng)))
    elif field == "method":
        spec["method"] = rng.choice(("ste", "flip", "hardened", "gf2", "new", odd_value(rng)))
    elif field == "group":
        spec["group"] = rng.choice((spec["group"] + rng.choice((-1, 1)), 0, 1, 64, 65, 2**70))
    elif field == "drop":
        del spec[rng.choice(sorted(spec))]
    else:
        spec[rng.choice(("extra", "values2"))] = odd_value(rng)
    return spec


def edit_scale(rng: random.Random, scale: Any) -> Any:
    """One edit of a packed tensor's ``scale`` description (or one where it had none)."""
    if not isinstance(scale, dict) or rng.random() < 0.1:
        return rng.choice(({"granularity": "channel", "mode": "learned"}, odd_value(rng)))
    scale = dict(scale)
    field = rng.choice(("granularity", "mode", "drop", "add"))
    if field == "granularity":
        scale[field] = rng.choice(("tensor", "channel", "token", 1, 2, 3, 0, -1, 2**70, 2.0))
    elif field == "mode":
        scale[field] = rng.choice(("learned", "absmean", "absmax", "static", odd_value(rng)))
    elif field == "drop":
        del scale[rng.choice(sorted(scale))]
    else:
        scale["extra"] = odd_value(rng)
    return scale


QUANTIZER_VALUES = {
    "values": lambda rng: edit_values(rng, [-1.0, 1.0]),
    "method": lambda rng: rng.choice(("ste", "stochastic", "gumbel", "flip", odd_value(rng))),
    "estimator": lambda rng: rng.choice(("clip", "identity", "inward", "x", odd_value(rng))),
    "scale": lambda rng: rng.choice(("tensor", "token", "channel", 0.5, -1.0, 1e-300, 1e309)),
    "scale_mode": lambda rng: rng.choice(("absmax", "learned", "static", None, odd_value(rng))),
    "feature_axis": lambda rng: rng.choice((0, 1, -1, -2, 63, 65, odd_value(rng))),
    "num_features": lambda rng: rng.choice((None, 5, 6, 7, 2**62, odd_value(rng))),
    "dtype": lambda rng: rng.choice((*FLOAT_NAMES, odd_value(rng))),
}


def edit_quantizers(rng: random.Random, text: str) -> Any:
    """One edit of ``snapset.quantizers``: a record's field, a record, or the whole."""
    if rng.random() < 0.1:
        return rng.choice(("", "{", "[]", "null", '{"0": 1}', "[" * 100_000, odd_value(rng)))
    recorded = json.loads(text)
    layer = rng.choice(sorted(recorded))
    kind = rng.randrange(6)
    if kind == 0:
        recorded[rng.choice(("1", "3", "0.weight", "", "x"))] = recorded.pop(layer)
    elif kind == 1:
        del recorded[layer]
    elif kind == 2:
        recorded[layer] = odd_value(rng)
    else:
        record = dict(recorded[layer])
        field = rng.choice(sorted(QUANTIZER_VALUES))
        if rng.random() < 0.1:
            del record[field]
        else:
            record[field] = QUANTIZER_VALUES[field](rng)
        recorded[layer] = record
    return json.dumps(recorded)


def edit_layers(rng: random.Random, text: str) -> str:
    """An edit of the layer list: its JSON, an entry's fields, or its order and names."""
    layers = json.loads(text)
    kind = rng.randrange(5)
    if kind == 0 or not layers:
        return rng.choice(("", "[", "{}", "[1]", '[{"name": 1, "kind": "dense"}]', "[" * 100_000))
    layer = rng.choice(layers)
    if kind == 1:
        layer[rng.choice(("name", "kind", "extra"))] = odd_value(rng)
    elif kind == 2:
        layer["name"] = rng.choice(("renamed", "", "0.weight", layer["name"] + ".x"))
    elif kind == 3:
        layer["kind"] = rng.choice(("dense", "conv2d", "torch.Linear", ""))
    else:
        rng.shuffle(layers)
    return json.dumps(layers)


def edit_metadata(rng: random.Random, metadata: dict[str, Any]) -> Any:
    kind = rng.randrange(11)
    if kind == 0:
        return odd_value(rng)
    metadata = dict(metadata)
    if kind == 10:
        metadata["snapset.layers"] = edit_layers(rng, metadata["snapset.layers"])
    elif "snapset.quantizers" in metadata and kind in (1, 2):
        metadata["snapset.quantizers"] = edit_quantizers(rng, metadata["snapset.quantizers"])
    elif kind == 1:
        metadata["format"] = rng.choice(("snapset2", "", odd_value(rng)))
    elif kind == 2:
        metadata["snapset.version"] = rng.choice(("0", "2", "1.0", odd_value(rng)))
    elif kind == 3:
        metadata["snapset.constrained"] = rng.choice(
            ("", "{", "[]", "null", '{"x": 1}', "[" * 100_000, odd_value(rng))
        )
    else:
        described = json.loads(metadata["snapset.constrained"])
        if not described:  # a file with nothing packed: describe a plain tensor as packed
            described = {"bias": {"values": [0, 1], "shape": [5], "dtype": "float32"}}
        name = rng.choice(sorted(described))
        if kind == 4:
            described[rng.choice((name + "x", "mask", "1.running_mean"))] = described.pop(name)
        elif kind == 5:
            del described[name]
        else:
            described[name] = edit_packed(rng, described[name])
        metadata["snapset.constrained"] = json.dumps(described)
    return metadata


def edit_entry(rng: random.Random, header: dict[str, Any], name: str) -> None:
    """One edit of a tensor's entry in the safetensors header."""
    entry = header[name]
    field = rng.choice(("dtype", "shape", "offsets", "offsets", "drop", "rename", "whole"))
    if field == "dtype":
        entry["dtype"] = rng.choice((*TENSOR_DTYPES, odd_value(rng)))
    elif field == "shape":
        entry["shape"] = edit_shape(rng, entry["shape"])
    elif field == "offsets":
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            (
                [end, start],
                [start + 1, end + 1],
                [start, end + 8],
                [0, end - start],
                [start, start],
                [start],
                [start, 2**64],
                [-8, end],
                [start, odd_value(rng)],
            )
        )
    elif field == "drop":
        del header[name]
    elif field == "rename":
        header[rng.choice((name + "x", "__metadata2__", ""))] = header.pop(name)
    else:
        header[name] = odd_value(rng)


def edit_header(rng: random.Random, data: bytes) -> bytes:
    """A structured edit of the JSON header, written back with its length right."""
    header, rest = split(data)
    names = [n for n in header if n != "__metadata__"]
    kind = rng.randrange(10)
    if kind < 4:
        edit_entry(rng, header, rng.choice(names))
    elif kind < 8:
        header["__metadata__"] = edit_metadata(rng, header["__metadata__"])
    elif kind == 8:
        header = rng.choice(([header], "header", None, {}))  # not the object it must be
    else:
        text = json.dumps(header)
        target = rng.choice(('"shape": [', '"data_offsets": ['))
        huge = rng.choice(("[" * 100_000, "9" * 5000 + ",", "1e999,", "-0,", "NaN,"))
        return join(text.replace(target, target + huge, 1), rest)
    return join(json.dumps(header), rest)


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "bit flips": flip_bits,
    "truncation": truncate,
    "byte edits": edit_bytes,
    "header length": edit_header_length,
    "tensor data": edit_data,
    "header fields": edit_header,
}
# Structured edits reach deeper than random bytes, which mostly break the JSON: weigh them up.
WEIGHTS = {"bit flips": 2, "truncation": 1, "byte edits": 2, "header length": 1}
WEIGHTS |= {"tensor data": 2, "header fields": 8}


# ----- the oracle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    config: Config
    mutation: str
    data: bytes


def make_case(seed: int, index: int) -> Case:
    rng = random.Random(f"{seed}:{index}")
    config_index = rng.choices(range(len(CONFIGS)), weights=[c.weight for c in CONFIGS])[0]
    mutation = rng.choices(list(MUTATIONS), weights=[WEIGHTS[m] for m in MUTATIONS])[0]
    data = MUTATIONS[mutation](rng, saved(config_index))
    return Case(index, CONFIGS[config_index], mutation, data)


def in_set(values: snapset.ValueSet, tensor: Tensor) -> bool:
    """Every entry is a member of ``values`` as ``tensor``'s dtype holds them."""
    table = torch.tensor(values.tables(str(tensor.dtype)).values, dtype=torch.float64)
    return bool(torch.isin(tensor.detach().double(), table).all())


REASONS = (
    ("too short", "too short"),
    ("header claims", "header length"),
    ("damaged header entry", "tensor entry"),
    ("damaged header", "header JSON"),
    ("not a snapset file", "not a snapset file"),
    ("format version", "version"),
    ("damaged 'snapset.constrained'", "packed metadata JSON"),
    ("constrained tensor", "packed description"),
    ("damaged codes", "codes"),
    ("bytes other than 0 and 1", "bool bytes"),
    ("cut short", "cut short"),
    ("tensors, more than", "tensor cap"),
    ("does not fit", "names vs model"),
    ("its layers do not fit", "layers vs model"),
    ("damaged 'snapset.layers'", "layers metadata JSON"),
    ("has shape", "shape vs model"),
    ("holds values of", "set vs model"),
    ("cannot load into the constrained model", "plain values vs set"),
    ("round-trip", "constraint round trip"),
    ("recomputes the scales", "statistic round trip"),
    ("in the file but", "scaling vs model"),
    ("the scales of", "scales"),
    ("damaged 'snapset.quantizers'", "quantizer metadata JSON"),
    ("learned scales of the input quantizer", "quantizer scales"),
    ("records no input quantizer", "quantizers vs model"),
    ("differs from the model's", "quantizer vs model"),
    ("input quantizer of", "quantizer record"),
    ("': ", "decoding"),
)


def reason(error: st.SnapsetFileError) -> str:
    message = str(error)
    return next((name for text, name in REASONS if text in message), "other")


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def positive(alpha: Tensor | None) -> bool:
    return alpha is None or bool((alpha.isfinite() & (alpha > 0)).all())


def holds_its_set(tensor: Tensor) -> bool:
    """A tensor marked by harden_ (or a load) holds members of its set, times its scales."""
    values, scaled = hardened_values(tensor), hardened_scales(tensor)
    if values is None:
        return scaled is None
    if scaled is None:
        return in_set(values, tensor)
    scale, alpha = scaled
    try:
        scaled_members(tensor, values, scale, alpha)  # alpha * v exactly, alpha > 0
    except ValueError:
        return False
    return True


def check_loaded_model(model: nn.Module, shapes: dict[str, torch.Size]) -> None:
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    for name, constraint in st.named_constraints(model):
        *path, tensor_name = name.split(".")
        owner = model.get_submodule(".".join(path))
        stored = owner.parametrizations[tensor_name].original  # type: ignore[index, union-attr]
        assert in_set(constraint.values, constraint.hard(stored)), name
        assert positive(constraint.scales(stored)), name
        if constraint.method == "flip":
            assert in_set(constraint.values, stored), name
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert holds_its_set(tensor), name
        if tensor.dtype == torch.bool:
            assert bool(tensor.view(torch.uint8).le(1).all()), name
    for name, quantizer in st.input_quantizers(model):
        assert positive(quantizer.alpha), name


def check_loaded_dict(loaded: dict[str, Tensor], data: bytes) -> None:
    header, _ = split(data)  # it loaded, so its header parses
    described = json.loads(header.pop("__metadata__").get("snapset.constrained", "{}"))
    scales = {name + ".scales" for name, spec in described.items() if "scale" in spec}
    assert loaded.keys() == header.keys() - scales
    for name, tensor in loaded.items():
        spec = described.get(name)
        if spec is not None:
            assert list(tensor.shape) == spec["shape"] and str(tensor.dtype)[6:] == spec["dtype"]
            assert hardened_values(tensor) == snapset.ValueSet(spec["values"]), name
            assert (hardened_scales(tensor) is None) == ("scale" not in spec), name
            assert holds_its_set(tensor), name
        else:
            assert list(tensor.shape) == header[name]["shape"], name
            assert hardened_values(tensor) is None, name
        if tensor.dtype == torch.bool:
            assert bool(tensor.view(torch.uint8).le(1).all()), name


def run_case(case: Case, path: Path) -> tuple[str, str]:
    """Load the damaged file into a model and into a dict; return both outcomes."""
    path.write_bytes(case.data)
    target = case.config.build(1)
    before, quantizers = state(target), list(st.input_quantizers(target))
    try:
        st.load(target, path)
        shapes = {k: v.shape for k, v in state(target).items()}  # with quantizers put in
        check_loaded_model(target, shapes)
        assert {k: shapes[k] for k in before} == {k: v.shape for k, v in before.items()}
        into_model = "loaded"
    except st.SnapsetFileError as error:
        after = state(target)
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before), "a refused load changed it"
        assert list(st.input_quantizers(target)) == quantizers, "a refused load changed them"
        into_model = reason(error)
    try:
        check_loaded_dict(st.load(None, path), case.data)
        into_dict = "loaded"
    except st.SnapsetFileError as error:
        into_dict = reason(error)
    return into_model, into_dict


def run(seed: int, cases: range, folder: Path) -> tuple[Counter[str], Counter[str]]:
    """Counts of outcomes (``loaded`` or a reason) by load into a model and into a dict."""
    into_model: Counter[str] = Counter()
    into_dict: Counter[str] = Counter()
    for index in cases:
        case = make_case(seed, index)
        try:
            model_outcome, dict_outcome = run_case(case, folder / "m.safetensors")
        except Exception as error:
            raise AssertionError(
                f"case {index} of seed {seed} ({case.config.name}, {case.mutation}): "
                f"{type(error).__name__}: {str(error)[:500]}"
            ) from error
        into_model[model_outcome] += 1
        into_dict[dict_outcome] += 1
    return into_model, into_dict


# ----- the tests --------------------------------------------------------------------------------


def test_every_config_round_trips_unmutated(tmp_path: Path) -> None:
    for index, config in enumerate(CONFIGS):
        outcome = run_case(Case(-1, config, "none", saved(index)), tmp_path / "m.safetensors")
        assert outcome == ("loaded", "loaded"), config.name


def test_mutated_files_load_whole_or_not_at_all(tmp_path: Path) -> None:
    into_model, into_dict = run(seed=0, cases=range(400), folder=tmp_path)
    # the mutations reach both outcomes, and many kinds of refusal
    assert into_model["loaded"] > 10 and into_dict["loaded"] > 10
    assert len(into_dict) > 8
    assert "other" not in into_model and "other" not in into_dict


@pytest.mark.slow
def test_more_mutated_files_load_whole_or_not_at_all(tmp_path: Path) -> None:
    into_model, into_dict = run(seed=1, cases=range(5000), folder=tmp_path)
    assert "other" not in into_model and "other" not in into_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        into_model, into_dict = run(args.seed, range(args.cases), Path(folder))
    seconds = time.perf_counter() - start
    print(f"{args.cases:,} cases of seed {args.seed} in {seconds:.0f} s, no other outcome\n")
    print("| outcome | load(model) | load(None) |\n|---|---:|---:|")
    outcomes = into_model + into_dict
    for outcome in sorted(outcomes, key=lambda o: (o != "loaded", -outcomes[o])):
        print(f"| {outcome} | {into_model[outcome]:,} | {into_dict[outcome]:,} |")


if __name__ == "__main__":
    sys.exit(main())
