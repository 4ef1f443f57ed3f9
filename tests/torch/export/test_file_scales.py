"""save / load of scaled sets (``w = alpha * v``) and of input quantizers: exact round trips,
and files or models that do not fit, refused with nothing changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

import snapset
import snapset.torch as st
from snapset._scales import Scaling
from snapset.torch._constrain import hardened_scales, hardened_values

INT8 = snapset.ValueSet(range(-128, 128))
METHODS = ("ste", "stochastic", "gumbel", "flip")
GRANULARITIES = ("tensor", "channel", 3)  # every constrained input axis (3, 24, 9) takes 3
X = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(1))


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(3, 6, 2),
        nn.Flatten(),
        nn.Linear(24, 9),
        nn.ReLU(),
        nn.Linear(9, 4),
    )


def scaled(
    values: snapset.ValueSet,
    method: str = "ste",
    scale: str | int = "channel",
    scale_mode: str | None = None,
    seed: int = 0,
) -> nn.Sequential:
    model = st.constrain_(make_model(seed), values, method, scale=scale, scale_mode=scale_mode)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # learned scales away from their start, as training leaves them
        for name, param in model.named_parameters():
            if name.endswith("scale.log_gain"):
                param.add_(torch.rand(param.shape, generator=generator) - 0.5)
    return model.eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def layout_of(model: nn.Module, name: str) -> Any:
    constraint = dict(st.named_constraints(model))[name]
    assert constraint.scale is not None
    return constraint.scale.layout


# ----- scaled weights ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", GRANULARITIES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_learned_scales_round_trip_exactly(tmp_path: Path, method: str, scale: str | int) -> None:
    model = scaled(snapset.Ternary(), method, scale)
    expected = model(X)
    path = st.save(model, tmp_path / "m.safetensors")

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["snapset.version"] == "2"  # which older snapsets refuse
        described = json.loads(f.metadata()["snapset.constrained"])
        for name in ("0.weight", "2.weight", "4.weight"):
            assert described[name]["scale"] == {"granularity": scale, "mode": "learned"}
            alpha = f.get_tensor(name + ".scales")
            assert alpha.dtype == torch.float32
            assert tuple(alpha.shape) == layout_of(model, name).scale_shape
        assert not any("alpha" in key for key in f.keys())  # noqa: SIM118  # saved beside the codes only

    same_way = st.load(scaled(snapset.Ternary(), method, scale, seed=7), path)
    assert torch.equal(same_way(X), expected)
    plain = st.load(make_model(seed=7).eval(), path)
    assert torch.equal(plain(X), expected)
    hardened = st.harden_(model)
    for index in (0, 2, 4):
        assert torch.equal(plain[index].weight, hardened[index].weight)  # alpha * v, bit for bit
        mark = hardened_scales(plain[index].weight)
        assert mark is not None and mark[0].scaling == Scaling(scale, "learned")
        assert torch.equal(mark[1], hardened_scales(hardened[index].weight)[1])  # type: ignore[index]
    exact = st.load(None, path)
    assert exact.keys() == hardened.state_dict().keys()  # no '.scales' entries
    assert all(torch.equal(exact[k], v) for k, v in hardened.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_scales_are_stored_in_the_parameters_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    model = scaled(snapset.ValueSet([-1, -0.5, 0.5, 1]), "flip", 3).to(dtype)
    path = st.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("2.weight.scales").dtype == dtype
    x = X.to(dtype)
    assert torch.equal(st.load(make_model(seed=2).to(dtype).eval(), path)(x), model(x))


def test_absmax_of_a_unit_set_loads_into_its_own_kind_exactly(tmp_path: Path) -> None:
    # max|alpha * v| is alpha exactly when a group holds a sign: the statistic gives it back
    model = scaled(snapset.Sign(), "stochastic", "channel", "absmax")
    path = st.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        described = json.loads(f.metadata()["snapset.constrained"])
    assert described["2.weight"]["scale"] == {"granularity": "channel", "mode": "absmax"}
    twin = st.load(scaled(snapset.Sign(), "ste", "channel", "absmax", seed=3), path)
    assert torch.equal(twin(X), model(X))
    assert torch.equal(st.load(make_model(seed=3).eval(), path)(X), model(X))


def test_absmean_loads_into_plain_models_and_is_refused_where_it_cannot_be_exact(
    tmp_path: Path,
) -> None:
    model = scaled(snapset.Ternary(), "ste", "tensor", "absmean")
    path = st.save(model, tmp_path / "m.safetensors")
    assert torch.equal(st.load(make_model(seed=3).eval(), path)(X), model(X))
    target = scaled(snapset.Ternary(), "ste", "tensor", "absmean", seed=3)
    before = state(target)
    with pytest.raises(st.SnapsetFileError, match=r"absmean' recomputes the scales .* plain model"):
        st.load(target, path)
    assert same_state(state(target), before)


def test_hardened_scaled_model_saves_packed_and_loads_marked(tmp_path: Path) -> None:
    model = scaled(snapset.Ternary(), "ste", 3)
    constrained_size = st.save(model, tmp_path / "c.safetensors").stat().st_size
    hardened = st.harden_(model)
    path = st.save(hardened, tmp_path / "h.safetensors")
    assert path.stat().st_size <= constrained_size + 100  # "hardened" is a longer method name
    with safe_open(str(path), framework="pt") as f:
        described = json.loads(f.metadata()["snapset.constrained"])
        assert described["4.weight"] == {
            "values": [-1.0, 0.0, 1.0],
            "shape": [4, 9],
            "dtype": "float32",
            "method": "hardened",
            "group": 29,
            "scale": {"granularity": 3, "mode": "learned"},
        }
    plain = st.load(make_model(seed=4).eval(), path)
    assert torch.equal(plain(X), hardened(X))
    assert hardened_values(plain[4].weight) == snapset.Ternary()
    constrained = st.load(scaled(snapset.Ternary(), "flip", 3, seed=4), path)  # learned alpha
    assert torch.equal(constrained(X), hardened(X))
    # saved again from the loaded plain model: the same contents
    again = st.save(plain, tmp_path / "again.safetensors")
    with safe_open(str(again), framework="pt") as f, safe_open(str(path), framework="pt") as g:
        assert f.metadata() == g.metadata()
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in g.keys())  # noqa: SIM118


def test_hardened_scaled_tensor_that_changed_is_saved_as_it_is_with_a_warning(
    tmp_path: Path,
) -> None:
    hardened = st.harden_(scaled(snapset.Sign(), "ste", "channel"))
    with torch.no_grad():
        hardened[2].weight[0, 0] *= 1.5  # fine-tuned in float after harden_
    with pytest.warns(UserWarning, match=r"'2\.weight' unpacked, as it is: .* changed since"):
        path = st.save(hardened, tmp_path / "m.safetensors")
    exact = st.load(None, path)
    assert torch.equal(exact["2.weight"], hardened[2].weight)
    assert hardened_values(exact["2.weight"]) is None
    assert hardened_scales(exact["4.weight"]) is not None  # the others stay packed


def test_a_bad_learned_scale_is_refused_at_save_and_nothing_is_written(tmp_path: Path) -> None:
    model = scaled(snapset.Sign())
    with torch.no_grad():
        model[2].parametrizations.weight[0].scale.start[1] = -0.5
    with pytest.raises(ValueError, match=r"1 entry that is not finite and > 0 \(for example -"):
        st.save(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


TARGETS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "unscaled": (
        lambda: st.constrain_(make_model(3), snapset.Ternary()).eval(),
        r"scaled \(scale='channel', scale_mode='learned'\) in the file but unscaled",
    ),
    "another granularity": (
        lambda: scaled(snapset.Ternary(), scale="tensor", seed=3),
        "but scaled \\(scale='tensor'",
    ),
    "another mode": (
        lambda: scaled(snapset.Ternary(), scale="channel", scale_mode="absmax", seed=3),
        "scale_mode='absmax'\\) in the model",
    ),
    "another set": (lambda: scaled(snapset.Sign(), seed=3), "holds values of"),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_model_of_another_scaling_is_refused_and_unchanged(tmp_path: Path, target: str) -> None:
    path = st.save(scaled(snapset.Ternary()), tmp_path / "m.safetensors")
    build, message = TARGETS[target]
    model = build()
    before = state(model)
    with pytest.raises(st.SnapsetFileError, match=message):
        st.load(model, path)
    assert same_state(state(model), before)


def test_unscaled_and_plain_files_are_refused_by_scaled_models(tmp_path: Path) -> None:
    target = scaled(snapset.Ternary(), seed=3)
    before = state(target)
    unscaled = st.save(st.constrain_(make_model(), snapset.Ternary()).eval(), tmp_path / "u")
    with safe_open(str(unscaled), framework="pt") as f:
        assert f.metadata()["snapset.version"] == "1"  # what every snapset reads
    with pytest.raises(st.SnapsetFileError, match="unscaled in the file but scaled"):
        st.load(target, unscaled)
    float_model = make_model()
    with torch.no_grad():  # plain tensors of members, which an unscaled constraint would take
        for layer in (float_model[0], float_model[2], float_model[4]):
            layer.weight.copy_(layer.weight.sign())
    plain = st.save(float_model, tmp_path / "p")
    with pytest.raises(st.SnapsetFileError, match="unscaled in the file but scaled"):
        st.load(target, plain)
    assert same_state(state(target), before)


# ----- damaged scales --------------------------------------------------------------------------


def rewrite(path: Path, change: Callable[[dict[str, Any], bytearray], None]) -> None:
    """Edit the header (a dict) and the data (bytes) of a file, keeping its layout right."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    data = bytearray(raw[8 + length :])
    change(header, data)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data))


def fill_scales(value: float) -> Callable[[dict[str, Any], bytearray], None]:
    def change(header: dict[str, Any], data: bytearray) -> None:
        start, end = header["2.weight.scales"]["data_offsets"]
        data[start:end] = torch.full(((end - start) // 4,), value).numpy().tobytes()

    return change


def edit_scale(**changes: object) -> Callable[[dict[str, Any], bytearray], None]:
    def change(header: dict[str, Any], data: bytearray) -> None:
        described = json.loads(header["__metadata__"]["snapset.constrained"])
        described["2.weight"]["scale"] = {**described["2.weight"]["scale"], **changes}
        header["__metadata__"]["snapset.constrained"] = json.dumps(described)

    return change


def replace_scale(value: object) -> Callable[[dict[str, Any], bytearray], None]:
    def change(header: dict[str, Any], data: bytearray) -> None:
        described = json.loads(header["__metadata__"]["snapset.constrained"])
        described["2.weight"]["scale"] = value
        header["__metadata__"]["snapset.constrained"] = json.dumps(described)

    return change


def claim_scales(**changes: object) -> Callable[[dict[str, Any], bytearray], None]:
    return lambda header, data: header["2.weight.scales"].update(changes)


def drop_scales(header: dict[str, Any], data: bytearray) -> None:
    described = json.loads(header["__metadata__"]["snapset.constrained"])
    del described["2.weight"]["scale"]
    header["__metadata__"]["snapset.constrained"] = json.dumps(described)


DAMAGE: dict[str, tuple[Callable[[dict[str, Any], bytearray], None], str]] = {
    "NaN scales": (fill_scales(float("nan")), "9 entries that are not finite and > 0"),
    "negative scales": (fill_scales(-2.0), r"not finite and > 0 \(for example -2.0\)"),
    "zero scales": (fill_scales(0.0), r"not finite and > 0 \(for example 0.0\)"),
    "infinite scales": (fill_scales(float("inf")), r"not finite and > 0 \(for example inf\)"),
    "scales of another shape": (
        claim_scales(shape=[3, 3], data_offsets=[0, 36]),
        r"needs scales '2\.weight\.scales' of float32 and shape \[9, 1\], the file holds "
        r"float32 of shape \[3, 3\]",
    ),
    "scales of another dtype": (
        claim_scales(dtype="F64", shape=[9, 1], data_offsets=[0, 72]),
        "the file holds float64",
    ),
    "a granularity that does not fit": (edit_scale(granularity=5), "does not divide"),
    "an unknown granularity": (edit_scale(granularity="row"), "Unknown scale 'row'"),
    "an unknown mode": (edit_scale(mode="absmin"), "scale mode 'absmin' is none of"),
    "a scale of the wrong kind": (replace_scale([1]), r"scale \[1\] is not an object"),
    "scales missing": (lambda header, data: header.pop("2.weight.scales"), "none \\(a damaged"),
    "scale description missing": (drop_scales, r"unexpected: 2\.weight\.scales"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_scales_are_refused_and_nothing_changes(tmp_path: Path, damage: str) -> None:
    path = st.save(scaled(snapset.Ternary()), tmp_path / "m.safetensors")
    change, message = DAMAGE[damage]
    rewrite(path, change)
    for target in (scaled(snapset.Ternary(), seed=5), make_model(5).eval()):
        before = state(target)
        with pytest.raises(st.SnapsetFileError, match=message):
            st.load(target, path)
        assert same_state(state(target), before)
    if damage != "scale description missing":  # then the scales are a plain tensor of a dict
        with pytest.raises(st.SnapsetFileError, match=message):
            st.load(None, path)


# ----- input quantizers ------------------------------------------------------------------------


def quantized(
    seed: int = 0, *, train_first: bool = True, token: st.Quantize | None = None
) -> nn.Sequential:
    """Every kind of input quantizer, one a layer: learned per channel, int8 per token
    (absmax; or ``token``), a static scale."""
    model = scaled(snapset.Ternary(), seed=seed)
    by_layer = {
        "0": st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=3,
                      feature_axis=1),
        "2": token or st.Quantize(INT8, "stochastic", scale="token"),
        "4": st.Quantize(snapset.Ternary(), estimator="identity", scale=0.25),
    }  # fmt: skip
    for layer, quantizer in by_layer.items():
        st.quantize_inputs_(model, quantizer, filter_fn=lambda m, name, layer=layer: name == layer)
    if train_first:  # the learned scale starts from a training batch
        model.train()(X + seed)
    return model.eval()


def records(model: nn.Module) -> dict[str, tuple[Any, ...]]:
    return {
        name: (q.values, q.method, q.estimator, q.scaling, q.feature_axis, q.num_features)
        for name, q in st.input_quantizers(model)
    }


def test_quantizers_are_recorded_and_put_back_into_plain_models(tmp_path: Path) -> None:
    model = quantized()
    path = st.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["snapset.version"] == "2"
        recorded = json.loads(f.metadata()["snapset.quantizers"])
    assert recorded["4"] == {
        "values": [-1.0, 0.0, 1.0],
        "method": "ste",
        "estimator": "identity",
        "scale": 0.25,
        "scale_mode": "static",
        "feature_axis": -1,
        "num_features": None,
        "dtype": "float32",
    }
    assert recorded["2"]["scale"] == "token" and recorded["2"]["method"] == "stochastic"

    plain = st.load(make_model(seed=4).eval(), path)
    assert records(plain) == records(model)
    assert torch.equal(plain(X), model(X))
    learned = dict(st.input_quantizers(plain))["0"]
    assert torch.equal(learned.alpha, dict(st.input_quantizers(model))["0"].alpha)  # type: ignore[arg-type]
    assert bool(learned.initialized)
    # it stays learned-and-started: training does not initialise it again
    before = learned.alpha.detach().clone()  # type: ignore[union-attr]
    plain.train()(X * 100)
    assert torch.equal(learned.alpha, before)  # type: ignore[arg-type]

    exact = st.load(None, path)
    assert exact.keys() == st.harden_(model).state_dict().keys()
    assert {"0.input_quantizer.start", "0.input_quantizer.log_gain"} <= set(exact)


def test_quantizers_that_match_load_and_others_are_refused(tmp_path: Path) -> None:
    path = st.save(quantized(), tmp_path / "m.safetensors")
    twin = quantized(seed=3, train_first=False)
    assert torch.equal(st.load(twin, path)(X), quantized()(X))

    other = quantized(seed=3, token=st.Quantize(INT8, "ste", scale="token"))  # not stochastic
    extra = scaled(snapset.Ternary(), seed=3)
    st.quantize_inputs_(extra, st.Quantize(snapset.Sign()), filter_fn=lambda m, name: name == "4")
    bare = st.save(scaled(snapset.Ternary()), tmp_path / "bare.safetensors")
    for target, file, message in (
        (other, path, r"quantizer of '2' differs from the model's in method \('stochastic' in"),
        (extra, bare, "records no input quantizer of '4', which the model has"),
    ):
        before, kept = state(target), records(target)
        with pytest.raises(st.SnapsetFileError, match=message):
            st.load(target, file)
        assert same_state(state(target), before) and records(target) == kept


def test_a_quantizer_for_a_layer_the_model_lacks_is_refused(tmp_path: Path) -> None:
    path = st.save(quantized(), tmp_path / "m.safetensors")
    small = nn.Sequential(nn.Conv1d(3, 6, 2), nn.Flatten(), nn.Linear(24, 9))
    with pytest.raises(st.SnapsetFileError, match=r"does not fit|does not have"):
        st.load(small, path)
    assert list(st.input_quantizers(small)) == []


def edit_quantizer(layer: str, **changes: object) -> Callable[[dict[str, Any], bytearray], None]:
    def change(header: dict[str, Any], data: bytearray) -> None:
        recorded = json.loads(header["__metadata__"]["snapset.quantizers"])
        recorded[layer] = {**recorded[layer], **changes}
        for key in [k for k, v in changes.items() if v is ...]:
            del recorded[layer][key]
        header["__metadata__"]["snapset.quantizers"] = json.dumps(recorded)

    return change


def fill_start(value: float) -> Callable[[dict[str, Any], bytearray], None]:
    def change(header: dict[str, Any], data: bytearray) -> None:
        start, end = header["0.input_quantizer.start"]["data_offsets"]
        data[start:end] = torch.full(((end - start) // 4,), value).numpy().tobytes()

    return change


QUANTIZER_DAMAGE: dict[str, tuple[Callable[[dict[str, Any], bytearray], None], str]] = {
    "an unknown method": (edit_quantizer("2", method="gumbel"), "Method 'gumbel' is not available"),
    "an unknown estimator": (edit_quantizer("2", estimator="magic"), "estimator"),
    "a method of the wrong kind": (edit_quantizer("2", method=[1]), "is not a string"),
    "a field missing": (edit_quantizer("4", scale=...), "not an object with fields"),
    "a negative static scale": (edit_quantizer("4", scale=-1.0), "not finite and > 0"),
    "a NaN static scale": (edit_quantizer("4", scale=float("nan")), "not finite and > 0"),
    "a huge num_features": (edit_quantizer("0", num_features=2**62), "does not match"),
    "num_features where none applies": (edit_quantizer("2", num_features=9), "does not match"),
    "a huge feature_axis": (edit_quantizer("2", feature_axis=10**30), "not an axis"),
    "an unknown dtype": (edit_quantizer("2", dtype="int8"), "unknown dtype"),
    "a set that merges": (edit_quantizer("2", values=[0, 1, 1.0001], dtype="float16"), "apart"),
    "NaN learned scales": (fill_start(float("nan")), "learned scales of the input quantizer"),
    "zero learned scales": (fill_start(0.0), r"not finite and > 0 \(for example 0.0\)"),
    "learned scales missing": (
        lambda header, data: header.pop("0.input_quantizer.start"),
        r"learned scales '0\.input_quantizer\.start' \(missing\)",
    ),
    "not an object": (
        lambda header, data: header["__metadata__"].__setitem__("snapset.quantizers", "[]"),
        "damaged 'snapset.quantizers' metadata",
    ),
}


@pytest.mark.parametrize("damage", list(QUANTIZER_DAMAGE))
def test_malformed_quantizer_records_are_refused_and_nothing_changes(
    tmp_path: Path, damage: str
) -> None:
    path = st.save(quantized(), tmp_path / "m.safetensors")
    change, message = QUANTIZER_DAMAGE[damage]
    rewrite(path, change)
    for target in (quantized(seed=5), make_model(5).eval()):
        before, kept = state(target), records(target)
        with pytest.raises(st.SnapsetFileError, match=message):
            st.load(target, path)
        assert same_state(state(target), before) and records(target) == kept


def test_a_quantizer_of_the_model_itself_round_trips(tmp_path: Path) -> None:
    # its state is 'input_quantizer.start' (and so on), with no layer name in front
    layer = st.constrain(nn.Linear(4, 2), "weight", snapset.Sign(), scale="channel")
    learned = st.Quantize(snapset.Ternary(), scale="tensor", scale_mode="learned")
    st.quantize_inputs_(layer, learned, modules=(nn.Linear,))
    layer.train()(torch.randn(3, 4))
    path = st.save(layer.eval(), tmp_path / "m.safetensors")
    plain = st.load(nn.Linear(4, 2), path)
    assert [name for name, _ in st.input_quantizers(plain)] == [""]
    x = torch.randn(5, 4)
    assert torch.equal(plain(x), layer(x))
    assert sorted(st.load(None, path)) == [
        "bias",
        "input_quantizer.initialized",
        "input_quantizer.log_gain",
        "input_quantizer.start",
        "weight",
    ]
