from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest

from engine import InvalidSpecError, LayerSpec, UnknownComponentError
from hwprofiles import (
    LATENCY_FORMAT,
    DeviceFingerprint,
    FingerprintMismatchWarning,
    Gap,
    LatencyDocument,
    LatencyTable,
    Measurement,
    TableEntry,
    list_profiles,
    load_profile,
    save_profile,
)


def linear(n: int, k: int, rows: int, name: str = "fc", calls: int = 1) -> LayerSpec:
    return LayerSpec(name=name, kind="linear", weight_shape=(n, k), params=n * k,
                     macs=rows * n * k * calls, input_shape=(rows, k), output_shape=(rows, n),
                     calls=calls)


def entry_for(layer: LayerSpec, times: dict) -> TableEntry:
    return TableEntry(layer.shape_signature, layer.kind, layer.macs // layer.calls,
                      {k: Measurement(kernel, us, us * 1.1, 5) for k, (kernel, us) in
                       times.items()}, layers=(layer.name,))


def make_table(device: DeviceFingerprint | None = None) -> LatencyTable:
    t = LatencyTable(device=device or DeviceFingerprint.current(), batch=8, repeats=5,
                     model="toy", overhead_us=12.5)
    t = t.with_entry(entry_for(linear(64, 64, 8), {"fp32": ("fp32", 10.0),
                                                    "8": ("onednn-int8", 4.0)}))
    return t.with_entry(entry_for(linear(256, 64, 8), {"fp32": ("fp32", 40.0),
                                                       "8": ("onednn-int8", 12.0)}))


def test_json_round_trip(tmp_path):
    table = make_table()
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["format"] == LATENCY_FORMAT
    assert set(data["device"]) >= {"cpu_model", "cores", "isa_flags", "torch_version",
                                   "torch_threads", "gpu"}
    back = LatencyTable.load(path)
    assert back == table
    assert LatencyTable.from_dict(table.to_dict()).to_dict() == table.to_dict()


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format="allocator.latency/99"), "format"),
    (lambda d: d.pop("device"), "device"),
    (lambda d: d.pop("batch"), "batch"),
    (lambda d: d["device"].pop("cpu_model"), "device.cpu_model"),
    (lambda d: next(iter(d["entries"].values()))["times"]["fp32"].pop("p50_us"), "p50_us"),
    (lambda d: next(iter(d["entries"].values()))["times"]["8"].update(p50_us=-1.0), "p50_us"),
    (lambda d: next(iter(d["entries"].values()))["times"]["8"].update(p90_us=math.inf),
     "p90_us"),
    (lambda d: next(iter(d["entries"].values()))["times"].update(
        {"9": {"kernel": "x", "p50_us": 1, "p90_us": 1, "samples": 1, "timestamp": "t"}}),
     "times"),
    (lambda d: d.update(batch=0), "batch"),
    (lambda d: d.update(overhead_us=-3.0), "overhead_us"),
    (lambda d: d.update(surprise=1), "surprise"),
])
def test_validation_names_the_field(mutate, field):
    data = make_table().to_dict()
    mutate(data)
    with pytest.raises(InvalidSpecError, match=field.replace(".", r"\.")):
        LatencyTable.from_dict(data)


def _first_entry(d: dict) -> dict:
    return next(iter(d["entries"].values()))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: _first_entry(d)["times"]["8"].update(p50_us=math.nan),
     r"`entries\['linear/w64x64/in8x64'\]\.times\.8\.p50_us` is nan"),
    (lambda d: _first_entry(d)["times"]["8"].update(samples=True), r"samples` is True"),
    (lambda d: _first_entry(d)["times"]["8"].update(samples=2.5), r"samples` is 2\.5"),
    (lambda d: _first_entry(d)["times"]["8"].update(extra=1), r"times\.8\.extra` is an unknown"),
    (lambda d: _first_entry(d).update(kind="lstm"), r"\.kind` is 'lstm'"),
    (lambda d: _first_entry(d).update(depthwise="no"), r"\.depthwise` is 'no'"),
    (lambda d: _first_entry(d)["times"].update({"4.0": _first_entry(d)["times"]["8"]}),
     r"times` has a bad key '4\.0'"),
    (lambda d: d.update(gaps=[{"layer": "fc", "native_us": 1.0, "cl_us": -1.0}]),
     r"`gaps\[0\]\.cl_us` is -1\.0"),
    (lambda d: d.update(gaps=[{"layer": "fc", "native_us": 1.0, "cl_us": 1.0, "x": 0}]),
     r"`gaps\[0\]\.x` is an unknown field"),
    (lambda d: d["device"].update(cores=0), r"`device\.cores` is 0"),
    (lambda d: d["device"].update(isa_flags="avx2"), r"`device\.isa_flags` is 'avx2'"),
    (lambda d: d.update(batch=8.5), r"`batch` is 8\.5"),
    (lambda d: d.update(model=3), r"`model` is 3"),
])
def test_refusals_name_path_and_value(mutate, message):
    data = make_table().to_dict()
    mutate(data)
    with pytest.raises(InvalidSpecError, match=message) as info:
        LatencyTable.from_dict(data)
    assert "\n" not in str(info.value)


def test_lenient_tables_still_read():
    data = make_table().to_dict()
    data.pop("repeats")
    data["gaps"] = None
    data["created"] = ""
    _first_entry(data)["times"][" 8"] = _first_entry(data)["times"].pop("8")
    table = LatencyTable.from_dict(data)
    assert table.repeats == 1 and table.gaps == () and table.created
    assert "8" in next(iter(table.entries.values())).times


def test_round_trip_is_byte_identical():
    table = make_table()
    table = dataclasses.replace(table, gaps=(Gap("fc", 1.0, 2.0),))
    text = table.to_json()
    again = LatencyTable.from_dict(json.loads(text))
    assert again == table
    assert again.to_json() == text


def test_document_json_schema():
    schema = LatencyDocument.model_json_schema()
    assert schema["required"] == ["format", "batch", "device", "entries"]
    assert schema["properties"]["format"]["const"] == LATENCY_FORMAT
    entry = schema["$defs"]["EntryDocument"]
    assert entry["properties"]["kind"]["enum"] == ["linear", "conv2d"]
    assert entry["properties"]["times"]["patternProperties"] == {
        "^(fp32|[2-8])$": {"$ref": "#/$defs/MeasurementDocument"}}
    measurement = schema["$defs"]["MeasurementDocument"]
    assert measurement["additionalProperties"] is False
    assert measurement["properties"]["p50_us"]["minimum"] == 0
    assert LatencyTable.from_dict(schema["examples"][0]).batch == 32


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidSpecError, match="bad.json"):
        LatencyTable.load(bad)
    with pytest.raises(InvalidSpecError, match="missing.json"):
        LatencyTable.load(tmp_path / "missing.json")


def test_negative_time_is_rejected_when_built():
    with pytest.raises(InvalidSpecError, match="p50_us"):
        Measurement("fp32", -1.0, 1.0, 3)


def test_lookup_measured_and_calls():
    table = make_table()
    assert table.lookup(linear(64, 64, 8), 8) == (4.0, "onednn-int8", False)
    twice = linear(64, 64, 8, calls=2)
    assert table.lookup(twice, "fp32").latency_us == pytest.approx(20.0)
    with pytest.raises(InvalidSpecError, match="bits"):
        table.lookup(twice, 9)


def test_interpolation_is_monotone_in_macs():
    table = make_table()
    # A third, non-monotone point (more MACs, less time) must not make time fall with MACs.
    table = table.with_entry(entry_for(linear(512, 64, 8), {"8": ("onednn-int8", 10.0)}))
    times = []
    for n in (16, 32, 100, 160, 255, 257, 300, 511, 513, 1024, 4096):  # unmeasured shapes
        us, kernel, interpolated = table.lookup(linear(n, 64, 8, name="q"), 8)
        assert interpolated and kernel == "onednn-int8"
        times.append(us)
    assert times == sorted(times)
    grid = [table.interpolate("linear", m, 8)[0] for m in range(0, 600_000, 997)]
    assert grid == sorted(grid)
    # linear between neighbours, proportional beyond the ends (fp32 points: 10 and 40 us)
    assert table.lookup(linear(160, 64, 8), "fp32").latency_us == pytest.approx(25.0)
    assert table.lookup(linear(32, 64, 8), "fp32").latency_us == pytest.approx(5.0)
    assert table.lookup(linear(512, 64, 8), "fp32").latency_us == pytest.approx(80.0)


def test_interpolation_needs_a_measured_shape_of_the_kind():
    conv = LayerSpec(name="c", kind="conv2d", weight_shape=(8, 3, 3, 3), params=216, macs=1000,
                     input_shape=(1, 3, 8, 8), output_shape=(1, 8, 8, 8))
    with pytest.raises(InvalidSpecError, match="conv2d"):
        make_table().lookup(conv, 8)


def test_fingerprint_mismatch_warns_once_per_table():
    other = dataclasses.replace(DeviceFingerprint.current(), cpu_model="Some Other CPU",
                                torch_version="1.0.0")
    table = make_table(other)
    with pytest.warns(FingerprintMismatchWarning, match="cpu_model.*torch_version"):
        table.lookup(linear(64, 64, 8), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table.lookup(linear(64, 64, 8), 8)  # already warned
    with pytest.warns(FingerprintMismatchWarning):
        assert table.check_fingerprint()


def test_same_device_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_table().check_fingerprint() == []
        make_table().lookup(linear(64, 64, 8), 8)


def test_registry_save_list_load(tmp_path, _profiles_dir):
    table = make_table()
    path = save_profile(table, "toy-b8")
    (_profiles_dir / "broken.json").write_text("{}")
    infos = {p.name: p for p in list_profiles()}
    assert infos["toy-b8"].entries == 2 and infos["toy-b8"].batch == 8
    assert infos["toy-b8"].model == "toy" and infos["toy-b8"].error is None
    assert infos["broken"].error
    assert load_profile("toy-b8") == table
    assert load_profile(path) == table
    with pytest.raises(UnknownComponentError, match="toy-b8"):
        load_profile("nope")


def conv(name: str, cin: int, cout: int) -> LayerSpec:
    return LayerSpec(name=name, kind="conv2d", weight_shape=(cout, cin, 3, 3),
                     params=cout * cin * 9, macs=cout * cin * 9 * 64,
                     input_shape=(1, cin, 8, 8), output_shape=(1, cout, 8, 8), padding=(1, 1))


def test_prediction_follows_the_layout_an_int8_conv_leaves():
    from hwprofiles import predict_latency

    c1, c2, fc = conv("c1", 3, 8), conv("c2", 8, 8), linear(10, 512, 1)
    m = lambda kernel, us: Measurement(kernel, us, us, 3)  # noqa: E731
    table = LatencyTable(device=DeviceFingerprint.current(), batch=1, overhead_us=100.0,
                         gaps=(Gap("c1", 50.0, 10.0), Gap("c2", 30.0, 20.0),
                               Gap("fc", 5.0, 5.0)))
    for c in (c1, c2):
        table = table.with_entry(TableEntry(
            c.shape_signature, "conv2d", c.macs,
            {"fp32": m("fp32", 40.0), "4": m("dequant", 45.0), "8": m("fbgemm-int8-static", 30.0)},
            transition={"fp32": m("fp32", 35.0), "4": m("dequant", 41.0),
                        "8": m("fbgemm-int8-static", 20.0)}))
    table = table.with_entry(entry_for(fc, {"fp32": ("fp32", 7.0), "8": ("onednn-int8", 3.0)}))
    layers = [c1, c2, fc]
    fp32 = predict_latency(table, layers, {})
    assert fp32.latency_us == pytest.approx(40 + 40 + 7 + 100)
    assert fp32.layout_correction_us == 0.0
    # c1 int8: its output is channels-last, so c2 (fp32) runs on a channels-last input
    # (35 instead of 40) and keeps it; both gaps after c1 and c2 take their cl times.
    p = predict_latency(table, layers, {"c1": 8})
    assert p.additive_us == pytest.approx(30 + 40 + 7 + 100)
    assert p.layout_correction_us == pytest.approx((35 - 40) + (10 - 50) + (20 - 30))
    assert p.latency_us == pytest.approx(p.additive_us + p.layout_correction_us)
    # only c2 int8: c1's output stays contiguous; only the gap after c2 changes
    q = predict_latency(table, layers, {"c2": 8, "fc": 8})
    assert q.layout_correction_us == pytest.approx(20 - 30)
    assert q.kernels == {"fp32": 1, "fbgemm-int8-static": 1, "onednn-int8": 1}
