"""save / load: packed safetensors files, exact round trips, and damaged or hostile files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import snapset
import snapset.torch as st
from snapset._packing import pack_codes, radix_for, unpack_codes

SETS = {
    "binary": snapset.Binary(),
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "four": snapset.ValueSet([1, -1, 0.5, -0.5]),
    "five": snapset.ValueSet([-2, -1, 0, 1, 2]),
    "seven": snapset.ValueSet([-0.3, 0.1, 0.2, 0.7, 1.5, 2.25, 4]),
}
METHODS = ("ste", "stochastic", "gumbel", "flip")


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3),
        nn.Flatten(),
        nn.Linear(3 * 9, 13),
        nn.BatchNorm1d(13),
        nn.ReLU(),
        nn.Linear(13, 5),
    )


def constrained(values: snapset.ValueSet, method: str, seed: int = 0) -> nn.Sequential:
    model = st.constrain_(make_model(seed), values, method)
    with torch.no_grad():  # non-trivial buffers, so that their round trip is tested too
        model[3].running_mean.uniform_(-1, 1)
    return model.eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


X = torch.randn(4, 2, 11, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("set_name", list(SETS))
def test_round_trip_is_exact(tmp_path: Path, set_name: str, method: str) -> None:
    values = SETS[set_name]
    model = constrained(values, method)
    expected = model(X)
    path = st.save(model, tmp_path / "m.safetensors")

    same_way = st.load(constrained(values, method, seed=7), path)
    assert torch.equal(same_way(X), expected)
    plain = st.load(make_model(seed=7).eval(), path)
    assert torch.equal(plain(X), expected)
    assert set(plain[2].weight.unique().tolist()) <= set(
        torch.tensor(values.values).float().tolist()
    )

    exact = st.load(None, path)
    hardened = st.harden_(model).state_dict()
    assert exact.keys() == hardened.keys()
    assert all(torch.equal(exact[k], hardened[k]) for k in exact)


def test_flip_trained_file_loads_into_flip_ste_and_plain_models(tmp_path: Path) -> None:
    model = st.constrain_(make_model(), snapset.Sign(), "flip")
    groups = st.param_groups(model)
    bop = st.Bop(groups.flip, threshold=0.0, gamma=0.5)
    adam = torch.optim.Adam(groups.latent + groups.other, lr=1e-2)
    before = model[2].weight.clone()
    for _ in range(3):
        bop.zero_grad()
        adam.zero_grad()
        model(X).square().mean().backward()
        bop.step()
        adam.step()
    assert not torch.equal(model[2].weight, before)  # it did train
    model.eval()
    path = st.save(model, tmp_path / "flip.safetensors")
    for target in (
        constrained(snapset.Sign(), "flip", seed=3),
        constrained(snapset.Sign(), "ste", seed=3),
        make_model(seed=3).eval(),
    ):
        assert torch.equal(st.load(target, path)(X), model(X))


def test_gf2linear_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = st.GF2Linear(20, 7).eval()
    bits = torch.randint(0, 2, (5, 20)).float()
    path = st.save(layer, tmp_path / "gf2.safetensors")
    for target in (st.GF2Linear(20, 7).eval(), st.GF2Linear(20, 7).harden_().eval()):
        assert torch.equal(st.load(target, path)(bits), layer(bits))
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("weight").numel() == math.ceil(140 / 8)


@pytest.mark.parametrize("set_name", list(SETS))
def test_sizes_by_arithmetic(tmp_path: Path, set_name: str) -> None:
    values = SETS[set_name]
    k, n = len(values), 300 * 101
    model = st.constrain(nn.Linear(101, 300, bias=False), "weight", values)
    path = st.save(model, tmp_path / "m.safetensors")
    radix = radix_for(k)
    full, rest = divmod(n, radix.group)
    expected = math.ceil((full * radix.field_bits + (k**rest - 1).bit_length()) / 8)
    with safe_open(str(path), framework="pt") as f:  # readable by the safetensors package
        codes = f.get_tensor("weight")
        assert json.loads(f.metadata()["snapset.constrained"])["weight"]["shape"] == [300, 101]
    assert codes.dtype == torch.uint8
    assert codes.numel() == expected
    assert set(load_file(str(path))) == {"weight"}
    assert expected <= math.ceil(n * values.bits / 8)  # never more than ceil(log2 k) bits
    assert expected * 8 / n <= math.log2(k) * 1.01 + 8 / n  # within 1% of log2(k), last byte aside
    if set_name == "ternary":
        assert expected * 8 / n <= 1.6
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size == 8 + header + expected
    assert st.summary(model).packed_bytes == expected


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7, 8, 16, 17, 60, 100, 255, 256])
def test_packing_round_trips_and_stays_close_to_log2_k(k: int) -> None:
    radix = radix_for(k)
    assert radix.field_bits <= 64 and k**radix.group <= 2**radix.field_bits
    assert radix.bits_per_weight <= math.ceil(math.log2(k))
    if k <= 59:
        assert radix.bits_per_weight <= 1.01 * math.log2(k)
    rng = np.random.default_rng(k)
    for count in (0, 1, radix.group - 1, radix.group, radix.group + 1, 1000, 70_001):
        codes = rng.integers(0, k, count)
        data = pack_codes(codes, radix)
        assert data.size == radix.nbytes(count)
        np.testing.assert_array_equal(unpack_codes(data, radix, count), codes)


# ----- damaged and hostile files ---------------------------------------------------------------


def rewrite_header(path: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])


def set_metadata(key: str, value: str) -> Callable[[dict], None]:  # type: ignore[type-arg]
    return lambda header: header["__metadata__"].__setitem__(key, value)


def describe_weight(**changes: object) -> Callable[[dict], None]:  # type: ignore[type-arg]
    """Replace the metadata of the ternary '2.weight' by a valid one with ``changes``."""
    spec = {"values": [-1, 0, 1], "shape": [13, 27], "dtype": "float32", "method": "ste"}
    spec = {**spec, "group": 29, **changes}
    return set_metadata("snapset.constrained", json.dumps({"2.weight": spec}))


def claim_shape(shape: list[int]) -> Callable[[dict], None]:  # type: ignore[type-arg]
    return lambda header: header["2.bias"].__setitem__("shape", shape)


def claim_packed_shape(shape: list[int]) -> Callable[[dict], None]:  # type: ignore[type-arg]
    def change(header: dict) -> None:  # type: ignore[type-arg]
        described = json.loads(header["__metadata__"]["snapset.constrained"])
        described["2.weight"]["shape"] = shape
        header["__metadata__"]["snapset.constrained"] = json.dumps(described)

    return change


def damage_codes(path: Path) -> None:
    # Ternary groups of 29 codes in 46 bits: all ones is 2^46 - 1 > 3^29 - 1, no valid group.
    raw = bytearray(path.read_bytes())
    length = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8 : 8 + length])["2.weight"]["data_offsets"]
    raw[8 + length + start : 8 + length + end] = b"\xff" * (end - start)
    path.write_bytes(bytes(raw))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (lambda p: p.write_bytes(b""), "too short"),
    "truncated in the header": (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated"),
    "truncated in the data": (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    "huge header length": (
        lambda p: p.write_bytes((2**62).to_bytes(8, "little") + p.read_bytes()[8:]),
        "header claims",
    ),
    "corrupted header": (
        lambda p: p.write_bytes(p.read_bytes()[:20] + b"\x00\xff{" + p.read_bytes()[23:]),
        "damaged header",
    ),
    "huge tensor shape": (lambda p: rewrite_header(p, claim_shape([2**40, 2**40])), "needs"),
    "huge tensor past the end": (
        lambda p: rewrite_header(
            p,
            lambda h: h["2.bias"].update(shape=[2**30], data_offsets=[0, 4 * 2**30]),
        ),
        "past the file",
    ),
    "huge packed shape": (lambda p: rewrite_header(p, claim_packed_shape([2**40, 2**40])), "take"),
    "unknown dtype": (
        lambda p: rewrite_header(p, lambda h: h["2.bias"].update(dtype="X9")),
        "dtype",
    ),
    "dtype of the wrong kind": (
        lambda p: rewrite_header(p, lambda h: h["2.bias"].update(dtype=["F32"])),
        "dtype",
    ),
    "packed group of the wrong kind": (
        lambda p: rewrite_header(p, describe_weight(group=5.0)),
        "group",
    ),
    "newer version": (
        lambda p: rewrite_header(p, set_metadata("snapset.version", "99")),
        "version '99'",
    ),
    "not snapset": (lambda p: rewrite_header(p, lambda h: h.pop("__metadata__")), "not a snapset"),
    "bad value set": (lambda p: rewrite_header(p, describe_weight(values=[1, 1])), "distinct"),
    "damaged codes": (damage_codes, "damaged codes"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_file_raises_and_leaves_the_model_as_it_was(tmp_path: Path, damage: str) -> None:
    path = st.save(constrained(snapset.Ternary(), "ste"), tmp_path / "m.safetensors")
    break_file, message = DAMAGE[damage]
    break_file(path)
    target = constrained(snapset.Ternary(), "ste", seed=5)
    before = state(target)
    with pytest.raises(st.SnapsetFileError, match=message):
        st.load(target, path)
    assert same_state(state(target), before)
    with pytest.raises(st.SnapsetFileError):
        st.load(None, path)


def test_mismatched_models_raise_and_change_nothing(tmp_path: Path) -> None:
    path = st.save(constrained(snapset.Ternary(), "ste"), tmp_path / "m.safetensors")
    # Shapes: the last layer has 4 outputs instead of 5; the earlier ones would load fine.
    narrower = constrained(snapset.Ternary(), "ste", seed=2)
    narrower[5] = st.constrain(nn.Linear(13, 4), "weight", snapset.Ternary())
    # Value set: Sign instead of Ternary.
    other_set = constrained(snapset.Sign(), "gumbel", seed=2)
    # Names: an extra layer.
    longer = nn.Sequential(*constrained(snapset.Ternary(), "ste", seed=2), nn.Linear(5, 2))
    cases = [
        (narrower, "shape"),
        (other_set, "constrains it to"),
        (longer, "missing: 6.bias, 6.weight"),
    ]
    for target, message in cases:
        before = state(target)
        with pytest.raises(st.SnapsetFileError, match=message):
            st.load(target, path)
        assert same_state(state(target), before)


def test_plain_file_loads_into_a_constrained_model_only_when_its_values_fit(
    tmp_path: Path,
) -> None:
    hardened = st.harden_(constrained(snapset.Sign(), "ste"))
    path = st.save(hardened, tmp_path / "plain.safetensors")  # no constraint left: all plain
    target = constrained(snapset.Sign(), "flip", seed=4)
    assert torch.equal(st.load(target, path)(X), hardened(X))
    float_path = st.save(make_model().eval(), tmp_path / "float.safetensors")
    target = constrained(snapset.Sign(), "ste", seed=4)
    before = state(target)
    with pytest.raises(st.SnapsetFileError, match="outside"):
        st.load(target, float_path)
    assert same_state(state(target), before)
