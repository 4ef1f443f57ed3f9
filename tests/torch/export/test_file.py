"""save / load: packed safetensors files, exact round trips, and damaged or hostile files."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import threading
import time
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
from snapset.torch._constrain import hardened_values

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


def edit_header_text(path: Path, old: str, new: str) -> None:
    """Replace text in the header (for what json.dumps cannot write), keeping its length right."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    text = raw[8 : 8 + length].decode()
    assert old in text
    header = text.replace(old, new, 1).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + length :])


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
    "huge tensor shape": (lambda p: rewrite_header(p, claim_shape([2**30, 2**30])), "needs"),
    "shape past int64": (
        lambda p: rewrite_header(p, claim_shape([0, 2**62, 2**62])),
        "product fits in int64",
    ),
    "too many dimensions": (lambda p: rewrite_header(p, claim_shape([1] * 65 + [13])), "64"),
    "huge tensor past the end": (
        lambda p: rewrite_header(
            p,
            lambda h: h["2.bias"].update(shape=[2**30], data_offsets=[0, 4 * 2**30]),
        ),
        "past the file",
    ),
    "huge packed shape": (lambda p: rewrite_header(p, claim_packed_shape([2**31, 2**31])), "take"),
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
    # Python's own limits, reached by a hostile header, surface as SnapsetFileError too.
    "deeply nested header": (
        lambda p: edit_header_text(p, '"shape":[13]', '"shape":' + "[" * 10**5 + "]" * 10**5),
        "damaged header",
    ),
    "deeply nested metadata": (
        lambda p: rewrite_header(p, set_metadata("snapset.constrained", "[" * 10**5)),
        "damaged 'snapset.constrained' metadata",
    ),
    "integer past the digit limit": (
        lambda p: edit_header_text(p, '"shape":[13]', '"shape":[' + "7" * 5000 + "]"),
        "damaged header",
    ),
    "integer too large for a float": (
        lambda p: rewrite_header(p, describe_weight(values=[-1, 0, 10**400])),
        "finite",
    ),
    "set that overflows its dtype": (
        lambda p: rewrite_header(p, describe_weight(values=[-1, 0, 1e30], dtype="float16")),
        "overflows",
    ),
    "set that merges in its dtype": (
        lambda p: rewrite_header(p, describe_weight(values=[-1, 1, 1.0001], dtype="float16")),
        "cannot be told apart",
    ),
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


def test_bool_tensor_with_other_bytes_is_refused(tmp_path: Path) -> None:
    model = make_model()
    model.register_buffer("mask", torch.tensor([True, False, True]))
    path = st.save(model.eval(), tmp_path / "m.safetensors")
    assert st.load(None, path)["mask"].tolist() == [True, False, True]
    raw = bytearray(path.read_bytes())
    length = int.from_bytes(raw[:8], "little")
    start, _ = json.loads(raw[8 : 8 + length])["mask"]["data_offsets"]
    raw[8 + length + start] = 2  # a bool of byte 2: torch would show True, but no writer makes it
    path.write_bytes(bytes(raw))
    with pytest.raises(st.SnapsetFileError, match="bytes other than 0 and 1"):
        st.load(None, path)


def distinct_sets(header: dict) -> None:  # type: ignore[type-arg]
    """Give each constrained tensor a set of its own: [-1, 0, 1], [-1, 0, 2], ..."""
    described = json.loads(header["__metadata__"]["snapset.constrained"])
    for offset, spec in enumerate(described.values()):
        spec["values"] = [-1, 0, 1 + offset]
    header["__metadata__"]["snapset.constrained"] = json.dumps(described)


@pytest.mark.parametrize(
    ("cap", "value", "break_file", "message"),
    [
        ("MAX_TENSORS", 10, None, "lists 11 tensors, more than the 10"),
        ("MAX_DIMS", 1, None, "at most 1 non-negative"),
        ("MAX_VALUES", 2, None, "at most 2 numbers"),
        (
            "MAX_DISTINCT_VALUES",
            8,  # one set of 3 values fits; three distinct sets of 3 do not
            lambda p: rewrite_header(p, distinct_sets),
            "more than the 8 distinct values",
        ),
    ],
)
def test_header_claims_are_capped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cap: str,
    value: int,
    break_file: Callable[[Path], None] | None,
    message: str,
) -> None:
    from snapset import _files

    path = st.save(constrained(snapset.Ternary(), "ste"), tmp_path / "m.safetensors")
    assert len(st.load(None, path)) == 11  # 3 ternary weights, 2 biases, 6 BatchNorm entries
    if break_file is not None:
        break_file(path)
    monkeypatch.setattr(_files, cap, value)
    with pytest.raises(st.SnapsetFileError, match=message):
        st.load(None, path)


# ----- one whole file --------------------------------------------------------------------------


def constant_model(value: float) -> nn.Sequential:
    """Forty layers whose weights are all ``value`` (a sign) and biases all ``2 * value``."""
    layers = []
    for _ in range(40):
        layer = nn.Linear(4, 4)
        with torch.no_grad():
            layer.weight.fill_(value)
            layer.bias.fill_(2 * value)
        layers.append(st.constrain(layer, "weight", snapset.Sign(), "flip", init="nearest"))
    return nn.Sequential(*layers)


def test_a_load_racing_a_save_sees_one_whole_file(tmp_path: Path) -> None:
    # Before loads read one open file, nearly every load here mixed layers of both files.
    path = tmp_path / "m.safetensors"
    models = constant_model(1.0), constant_model(-1.0)
    st.save(models[0], path)
    stop = threading.Event()

    def saver() -> None:
        while not stop.is_set():
            for model in models:
                st.save(model, path)

    thread = threading.Thread(target=saver)
    thread.start()
    seen: list[set[float]] = []
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or len(seen) < 20:
            try:
                loaded = st.load(None, path)
            except st.SnapsetFileError:  # allowed, though a whole file never raises
                continue
            seen.append({float(t.sign().unique()) for t in loaded.values()} if loaded else set())
    finally:
        stop.set()
        thread.join()
    assert all(len(signs) == 1 for signs in seen), [s for s in seen if len(s) > 1][:3]


# ----- save: modes, extras, values outside their sets -------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=oct)
def test_save_gives_the_mode_a_new_file_gets(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = st.save(constrained(snapset.Sign(), "ste"), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_save_and_load_need_no_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "safetensors" or name.startswith("safetensors."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # an import of it would fail
    model = constrained(snapset.Sign(), "ste")
    path = st.save(model, tmp_path / "m.safetensors")
    assert torch.equal(st.load(None, path)["2.bias"], model[2].bias)


def test_safetensors_reads_what_save_writes_in_every_dtype(tmp_path: Path) -> None:
    """The file is a safetensors file: its own reader gives back every tensor as saved."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2).to(torch.bfloat16))
    model[1].register_buffer("mask", torch.tensor([True, False, True, True]))
    model[1].register_buffer("codes", torch.tensor([[1, -2], [3, 4]], dtype=torch.int8))
    st.constrain(model[0], "weight", snapset.Ternary(), scale="channel")
    path = st.save(model, tmp_path / "m.safetensors")
    theirs = load_file(str(path))
    ours = st.load(None, path)
    assert set(theirs) == set(ours) | {"0.weight.scales"}
    for name, tensor in ours.items():
        if name != "0.weight":  # codes there, values here
            assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor)
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["snapset.layers"]) == [
            {"name": "0", "kind": "dense"},
            {"name": "1", "kind": "batchnorm"},
            {"name": "2", "kind": "dense"},
        ]


def test_save_refuses_a_flip_parameter_off_its_set_and_writes_nothing(tmp_path: Path) -> None:
    model = constrained(snapset.Sign(), "flip")
    path = st.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with torch.no_grad():  # as a gradient step of another optimizer would move it
        model[0].parametrizations.weight.original.mul_(0.97)
    with pytest.raises(snapset.OutsideSetError, match=r"'0.weight' holds 18 values outside"):
        st.save(model, path)
    assert path.read_bytes() == before  # the earlier file stays, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_flip_values_are_saved_exact_after_a_dtype_move(tmp_path: Path) -> None:
    values = snapset.ValueSet([0.1, 0.2, 0.3])  # none exact in a float
    model = constrained(values, "flip").double()  # the float32 roundings, moved to float64
    exact = st.load(None, st.save(model, tmp_path / "m.safetensors"))
    table = torch.tensor(values.values, dtype=torch.float64)
    assert exact["2.weight"].dtype == torch.float64
    assert bool(torch.isin(exact["2.weight"], table).all())


def test_save_refuses_what_load_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapset import _files

    monkeypatch.setattr(_files, "MAX_DIMS", 1)
    with pytest.raises(ValueError, match=r"cannot save this model: .* at most 1 non-negative"):
        st.save(constrained(snapset.Sign(), "ste"), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


# ----- hardened tensors and declared sets --------------------------------------------------------


def test_hardened_model_saves_packed_and_loads_marked(tmp_path: Path) -> None:
    model = constrained(snapset.Ternary(), "ste")
    packed_size = st.save(model, tmp_path / "constrained.safetensors").stat().st_size
    hardened = st.harden_(model)
    path = st.save(hardened, tmp_path / "hardened.safetensors")
    assert path.stat().st_size <= packed_size + 100  # a longer method name in the header
    described = json.loads(safe_open(str(path), "pt").metadata()["snapset.constrained"])
    assert {name: spec["method"] for name, spec in described.items()} == {
        "0.weight": "hardened",
        "2.weight": "hardened",
        "5.weight": "hardened",
    }
    exact = st.load(None, path)
    assert hardened_values(exact["2.weight"]) == snapset.Ternary()
    assert hardened_values(exact["2.bias"]) is None
    plain = st.load(make_model(seed=3).eval(), path)
    assert torch.equal(plain(X), hardened(X))
    assert hardened_values(plain[2].weight) == snapset.Ternary()
    assert st.summary(plain).constrained_count == st.summary(model).constrained_count > 0
    # and a file of plain values takes the marks away again
    st.load(plain, st.save(make_model().eval(), tmp_path / "float.safetensors"))
    assert hardened_values(plain[2].weight) is None


def test_hardened_gf2linear_saves_packed(tmp_path: Path) -> None:
    layer = st.GF2Linear(20, 7).harden_().eval()
    path = st.save(layer, tmp_path / "gf2.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("weight").numel() == math.ceil(140 / 8)
    bits = torch.randint(0, 2, (5, 20)).float()
    assert torch.equal(st.load(st.GF2Linear(20, 7).eval(), path)(bits), layer(bits))
    assert [row.method for row in st.summary(layer).rows] == ["hardened"]


def test_hardened_tensor_that_left_its_set_is_saved_as_it_is_with_a_warning(
    tmp_path: Path,
) -> None:
    hardened = st.harden_(constrained(snapset.Sign(), "ste"))
    with torch.no_grad():
        hardened[2].weight[0, 0] = 0.25  # fine-tuned in float after harden_
    with pytest.warns(
        UserWarning, match=r"'2\.weight' unpacked, as it is: '2\.weight' holds 1 value outside"
    ):
        path = st.save(hardened, tmp_path / "m.safetensors")
    exact = st.load(None, path)
    assert exact["2.weight"][0, 0] == 0.25 and hardened_values(exact["2.weight"]) is None
    assert hardened_values(exact["0.weight"]) == snapset.Sign()  # the others stay packed
    assert [row.method for row in st.summary(hardened).rows if row.name == "2.weight"] == ["-"]
    close = st.harden_(constrained(snapset.ValueSet([-1, 1, 1.001]), "ste")).half()
    with pytest.warns(UserWarning, match=r"unpacked, as it is: .* which cannot hold its set"):
        st.save(close, tmp_path / "half.safetensors")  # 1 and 1.001 merged in float16


def test_declared_sets_pack_plain_tensors(tmp_path: Path) -> None:
    model = make_model().eval()
    with torch.no_grad():
        model[5].weight.copy_(torch.where(model[5].weight >= 0, 1.0, -1.0))
    path = st.save(model, tmp_path / "m.safetensors", values={"5.weight": snapset.Sign()})
    exact = st.load(None, path)
    assert torch.equal(exact["5.weight"], model[5].weight)
    assert hardened_values(exact["5.weight"]) == snapset.Sign()
    with pytest.raises(snapset.OutsideSetError, match=r"'2\.weight' holds 351 values outside"):
        st.save(model, tmp_path / "n.safetensors", values={"2.weight": [-1, 1]})
    with pytest.raises(ValueError, match=r"'5\.wieght', which is not a plain tensor"):
        st.save(model, tmp_path / "n.safetensors", values={"5.wieght": [-1, 1]})
    assert not (tmp_path / "n.safetensors").exists()


def test_layers_named_otherwise_pair_in_order_and_kinds_must_agree(tmp_path: Path) -> None:
    model = constrained(snapset.Ternary(), "ste").eval()
    path = st.save(model, tmp_path / "m.safetensors")
    # the same layers under other names (as a Keras model names them): paired in order
    renamed = nn.Sequential()
    for index, module in enumerate(constrained(snapset.Ternary(), "ste", seed=3)):
        renamed.add_module(f"layer_{index}", module)
    assert torch.equal(st.load(renamed, path).eval()(X), model(X))
    # a layer of another kind at the same place: refused, nothing changed
    other = nn.Sequential()
    for index, module in enumerate(constrained(snapset.Ternary(), "ste", seed=4)):
        other.add_module(f"layer_{index}", nn.Conv1d(1, 1, 1) if index == 2 else module)
    before = state(other)
    with pytest.raises(st.SnapsetFileError, match=r"layer 2 is dense '2' in the file"):
        st.load(other, path)
    assert all(torch.equal(before[k], v) for k, v in state(other).items())
