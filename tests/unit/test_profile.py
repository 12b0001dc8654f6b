"""Profiling on this machine, and profiles the planner must refuse."""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from partitioner import ModelGraph, enumerate_cuts
from partitioner.cli import main
from partitioner.cuts import Cut, cut_from_tensors
from partitioner.plan import Planner
from partitioner.profile import ProfileOptions, calibration_feeds, load_profile, profile_model
from runtime.errors import CutError, ProfileError
from tests.graphs import FAMILIES

QUICK = ProfileOptions(warmup=1, repeats=3, min_time_ms=0.0)


@pytest.fixture(scope="module")
def chain():
    return ModelGraph.load(FAMILIES["chain_cnn"]())


@pytest.fixture(scope="module")
def profile(chain):
    feeds = calibration_feeds(chain, samples=4)
    return profile_model(chain, feeds, replace(QUICK, batch=2), progress=False)


def test_a_profile_measures_every_cut_and_codec(chain, profile):
    cuts = enumerate_cuts(chain)
    assert [c.id for c in profile.cuts] == [c.id for c in cuts]
    assert profile.batch == 2 and profile.samples == 4 and profile.full_ms.median_ms > 0
    for measured, cut in zip(profile.cuts, cuts, strict=True):
        assert measured.tensors == cut.tensor_names
        assert (measured.head_ms is None) == (cut.id == "cloud")
        assert (measured.tail_ms is None) == (cut.id == "edge")
        if cut.id != "edge":
            assert cut.bytes is not None and measured.bytes == 2 * cut.bytes  # two per request
            raw = measured.codecs["raw"]
            assert raw.bytes == measured.bytes
            if raw.bytes > 4096:  # below that, frame headers are a fair share
                assert measured.codecs["int8+zstd"].bytes < raw.bytes / 3
            lossy = measured.errors["int8+zstd"]
            assert 0 < lossy.rel_l2 < 0.1 and lossy.top1 is not None  # class scores
    # every tensor a node reads has codec measurements, for the min-cut
    assert set(profile.tensors) == set(chain.consumers)


def test_slowdown_dilates_every_time(chain, profile):
    feeds = calibration_feeds(chain, samples=2)
    slow = profile_model(chain, feeds, replace(QUICK, slowdown=50.0), progress=False)
    assert slow.slowdown == 50.0
    assert slow.full_ms.median_ms > 10 * profile.full_ms.median_ms / 2  # per sample, x50


def test_a_run_after_idling_is_measured_and_an_emulated_device_pays_it_once(chain, profile):
    """The profile measures what a run costs beyond a warm one after the machine idled
    (runs between requests do); a device emulated from its full-model time between
    requests is scaled by what remains of that time beyond it."""
    assert math.isfinite(profile.cold_ms) and profile.cold_ms >= 0
    cold = replace(profile, cold_ms=2.0)
    full = cold.full_ms.median_ms
    device = cold.scaled_to("edge", 2.0 + 8 * full)  # 8x this machine, plus one cold run
    assert device.slowdown == pytest.approx(8.0) and device.cold_ms == 2.0
    assert device.full_ms.median_ms == pytest.approx(8 * full)
    head = next(c for c in cold.cuts if c.head_ms is not None and c.tail_ms is not None)
    scaled = device.cut(head.id).head_ms
    assert head.head_ms is not None and scaled is not None
    assert scaled.median_ms == pytest.approx(8 * head.head_ms.median_ms)


def test_a_busy_moment_of_the_machine_does_not_skew_one_cut(chain, monkeypatch):
    """Six runs 30 ms slower, from the second run of one cut's head on: timed one cut
    after another, that head's median is the busy moment's; timed in rounds over all
    cuts, the moment is a minority of every cut's runs."""
    import partitioner.profile as measuring

    cut = next(c for c in enumerate_cuts(chain) if c.id not in ("edge", "cloud"))
    run = measuring.run_session

    def profile_with_a_busy_moment(rounds: int):
        seen, busy = 0, 0

        def busy_machine(session, feeds):
            nonlocal seen, busy
            if [o.name for o in session.get_outputs()] == list(cut.tensor_names):
                seen += 1
                busy = 6 if seen == 2 else busy
            if busy:
                busy -= 1
                time.sleep(0.03)
            return run(session, feeds)

        monkeypatch.setattr(measuring, "run_session", busy_machine)
        options = replace(QUICK, repeats=9, rounds=rounds)
        feeds = calibration_feeds(chain, samples=1)
        profiled = profile_model(chain, feeds, options, cuts=[cut], progress=False)
        assert seen > 1  # the busy moment happened
        head = profiled.cut(cut.id).head_ms
        assert head is not None
        return head.median_ms

    assert profile_with_a_busy_moment(1) > 30
    assert profile_with_a_busy_moment(3) < 10


def test_a_profile_round_trips_through_json(chain, profile, tmp_path):
    path = tmp_path / "p.json"
    profile.save(path)
    assert load_profile(path, chain) == profile


def _tampered(profile, tmp_path: Path, change) -> Path:
    raw = profile.to_json()
    change(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_profile_of_another_model_is_refused(profile, tmp_path):
    path = tmp_path / "p.json"
    profile.save(path)
    other = ModelGraph.load(FAMILIES["resnet"]())
    with pytest.raises(ProfileError, match="taken of another model"):
        load_profile(path, other)
    with pytest.raises(ProfileError, match="another model"):
        Planner(other, profile, profile)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw["cuts"][1]["head_ms"].update(median_ms=-3.0), "must be finite and >= 0"),
        (lambda raw: raw["cuts"][1]["codecs"]["zstd"].update(bytes=float("nan")), "must be finite"),
        (lambda raw: raw.update(kind="something"), "not a splitinfer profile"),
        (lambda raw: raw.pop("cuts"), "malformed profile"),
        (lambda raw: raw.update(slowdown=0), "must be a positive number"),
        (lambda raw: raw.update(cold_ms=-1.0), "cold_ms is -1.0"),
    ],
)
def test_impossible_or_malformed_profiles_are_refused(profile, tmp_path, change, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(_tampered(profile, tmp_path, change))


def test_a_profile_missing_cuts_is_refused(chain, profile, tmp_path):
    def drop_edge(raw):
        raw["cuts"] = [c for c in raw["cuts"] if c["id"] != "edge"]

    partial = load_profile(_tampered(profile, tmp_path, drop_edge))
    with pytest.raises(ProfileError, match="lacks the 'edge' cut"):
        Planner(chain, partial, partial)
    with pytest.raises(ProfileError, match="measured different cuts"):
        Planner(chain, partial, profile)


def test_calibration_inputs_from_a_directory(chain, tmp_path):
    np.save(tmp_path / "image.npy", np.ones((3, 3, 16, 16), np.float32))
    feeds = calibration_feeds(chain, calib=tmp_path)
    assert feeds["image"].shape == (3, 3, 16, 16)
    np.save(tmp_path / "image.npy", np.ones((3, 3, 16, 16), np.float64))
    with pytest.raises(
        Exception, match=r"image.npy has dtype float64, the model.s input .image. takes float32"
    ):
        calibration_feeds(chain, calib=tmp_path)


def test_the_cli_profiles_plans_sweeps_splits_and_checks(tmp_path, capsys):
    model = tmp_path / "resnet.onnx"
    onnx.save_model(FAMILIES["resnet"](), str(model))
    edge, cloud = tmp_path / "edge.json", tmp_path / "cloud.json"
    quick = ["--samples", "2", "--repeats", "3"]
    assert main(["profile", str(model), "--out", str(edge), "--slowdown", "8", *quick]) == 0
    assert main(["profile", str(model), "--out", str(cloud), "--device", "cloud", *quick]) == 0
    capsys.readouterr()
    measured = load_profile(cloud)  # a split call's own cost, through a real server
    assert 0 < measured.call_ms < 100 and measured.tensor_ms >= 0
    common = [str(model), "--edge", str(edge), "--cloud", str(cloud)]
    png = tmp_path / "plan.png"
    assert main(["plan", *common, "--uplink", "10mbit", "--rtt", "20ms", "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "best:" in table and table.splitlines()[1].startswith("*")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plan", *common, "--uplink", "1.5gbit", "--rtt", "5ms", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer["best"]) == {"cut", "codec", "predicted_ms"}
    assert {"cut", "codec", "predicted_ms"} <= set(answer["candidates"][0])
    assert answer["best"]["predicted_ms"] == min(c["predicted_ms"] for c in answer["candidates"])

    assert main(["plan", *common, "--codecs", "raw", "--keep-input-on-device", "--json"]) == 0
    restricted = json.loads(capsys.readouterr().out)["candidates"]
    assert {c["codec"] for c in restricted} <= {"raw", "-"}
    assert not any("image" in c["tensors"] for c in restricted)
    assert main(["plan", *common, "--uplink", "1mbit", "--protocol", "kserve", "--json"]) == 0
    over_kserve = json.loads(capsys.readouterr().out)["candidates"]  # raw tensors only
    assert {c["codec"] for c in over_kserve} == {"raw", "-"}

    plan = tmp_path / "plan.json"
    assert main(["plan", *common, "--sweep", "--out", str(plan)]) == 0
    chosen = [c["id"] for c in json.loads(plan.read_text())["cuts"]]
    assert "edge" in chosen
    out = tmp_path / "art"
    assert main(["split", str(model), "--plan", str(plan), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["id"] for c in manifest["cuts"]] == chosen
    assert manifest["plan"]["cuts"] == json.loads(plan.read_text())["cuts"]

    capsys.readouterr()
    assert main(["check-profile", str(model), "--profile", str(cloud), "--samples", "2"]) == 0
    assert "median |error|" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag, value, message",
    [("--uplink", "fast", "bad rate 'fast'"), ("--rtt", "soon", "bad duration")],
)
def test_bad_units_are_one_line_errors(profile, tmp_path, capsys, flag, value, message):
    model = tmp_path / "chain.onnx"
    onnx.save_model(FAMILIES["chain_cnn"](), str(model))
    path = tmp_path / "p.json"
    profile.save(path)
    code = main(["plan", str(model), "--edge", str(path), "--cloud", str(path), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw["cuts"][1]["errors"]["int8+zstd"].update(rel_l2=-0.5), "rel_l2"),
        (lambda raw: raw["cuts"][1]["errors"]["int8+zstd"].update(top1=3), "top1"),
        (lambda raw: raw.update(slowdown=float("inf")), "slowdown"),
        (lambda raw: raw["full_ms"].update(p90_ms=-1), "p90_ms"),
        (lambda raw: raw.update(threads=1_000_000), "threads"),
        (lambda raw: raw.update(tensors=[]), "malformed"),
        (lambda raw: raw["cuts"].append(dict(raw["cuts"][0])), "appear twice"),
    ],
)
def test_profiles_with_impossible_errors_or_settings_are_refused(
    profile, tmp_path, change, message
):
    with pytest.raises(ProfileError, match=message):
        load_profile(_tampered(profile, tmp_path, change))


def test_calibration_arrays_of_the_wrong_rank_are_refused(chain, tmp_path):
    np.save(tmp_path / "image.npy", np.ones((2, 5), np.float32))
    with pytest.raises(Exception, match=r"input .image. has rank 4"):
        calibration_feeds(chain, calib=tmp_path)
    np.save(tmp_path / "image.npy", np.float32(1.0))
    with pytest.raises(Exception, match="scalar"):
        calibration_feeds(chain, calib=tmp_path)


def test_frames_price_the_delta_codecs_on_a_still_camera(chain, tmp_path):
    """profile --frames: the delta codecs measured frame after frame. On a still scene
    with a small moving block, the input's delta costs a fraction of its zstd frame;
    the frames come from a directory (one .npy each) or are generated ('still')."""
    from partitioner.profile import frame_sequence

    feeds = calibration_feeds(chain, samples=2)
    still = frame_sequence(chain, "still", feeds)
    assert len(still) == 16 and still[0]["image"].shape == (1, 3, 16, 16)
    changed = [not np.array_equal(a["image"], b["image"]) for a, b in itertools.pairwise(still)]
    assert all(changed)
    for n, frame in enumerate(still[:4]):
        np.save(tmp_path / f"frame{n:03d}.npy", frame["image"])
    assert [f["image"].tobytes() for f in frame_sequence(chain, tmp_path, feeds)] == [
        f["image"].tobytes() for f in still[:4]
    ]
    profile = profile_model(chain, feeds, QUICK, progress=False, frames=still)
    cloud = next(c for c in profile.cuts if c.id == "cloud")
    assert {"delta+zstd+shuffle", "delta+int8+zstd"} <= set(cloud.codecs)
    assert cloud.codecs["delta+zstd+shuffle"].bytes < cloud.codecs["zstd+shuffle"].bytes / 3
    assert "delta+int8+zstd" in cloud.errors
    plain = profile_model(chain, feeds, QUICK, progress=False)
    assert not any(label.startswith("delta") for c in plain.cuts for label in c.codecs)
    with pytest.raises(Exception, match=r"at least two \.npy frames"):
        frame_sequence(chain, _one_frame(tmp_path, still[0]["image"]), feeds)


def _one_frame(tmp_path: Path, frame: np.ndarray) -> Path:
    directory = tmp_path / "one"
    directory.mkdir()
    np.save(directory / "only.npy", frame)
    return directory


def test_delta_codecs_are_planned_for_streams_only(chain):
    """A still camera's delta frames are cheap, so a throughput plan may send them; a
    latency plan prices one request sent alone, which is a key frame: never delta."""
    from partitioner.plan import Link

    feeds = calibration_feeds(chain, samples=2)
    from partitioner.profile import frame_sequence

    profile = profile_model(
        chain, feeds, QUICK, progress=False, frames=frame_sequence(chain, "still", feeds)
    )
    planner = Planner(chain, profile.emulating("edge", 50.0), profile)
    slow = Link(0.5e6, 10.0)  # the input's zstd frame takes long; its delta much less
    latency = planner.choose(slow, objective="latency")
    assert not any(c.codec.startswith("delta") for c in latency.candidates)
    throughput = planner.choose(slow, objective="throughput")
    priced = {(c.cut, c.codec): c for c in throughput.candidates}
    delta, plain = priced[("cloud", "delta+zstd+shuffle")], priced[("cloud", "zstd+shuffle")]
    assert delta.bytes < plain.bytes / 3 and delta.predicted_fps > 2 * plain.predicted_fps


def test_cuts_profiled_later_join_the_profile_scaled_by_the_machines_drift():
    """A plan may choose a cut the profile did not time (crossed by more tensors than it
    took): profiled afterwards, it joins the first profile, its times scaled by the
    two full-model times, and the planner prices it as measured."""
    from partitioner.plan import Link
    from runtime.codec import CodecSpec

    graph = ModelGraph.load(FAMILIES["resnet"]())
    feeds = calibration_feeds(graph, samples=1)
    options = ProfileOptions(
        repeats=2, warmup=1, rounds=1, min_time_ms=0, max_tensors=1, codecs=(CodecSpec(),)
    )
    first = profile_model(graph, feeds, options, progress=False)
    # a cut no enumeration lists (the min-cut finds such heads): x + its tensors' digest
    wide = next(
        cut
        for pair in itertools.combinations(graph.consumers, 2)
        if (cut := _cut_or_none(graph, pair)) is not None and cut.id.startswith("x")
    )
    later = profile_model(graph, feeds, options, cuts=[wide], progress=False)
    merged = first.with_cuts(later)
    assert merged.cuts[: len(first.cuts)] == first.cuts and merged.full_ms == first.full_ms
    drift = first.full_ms.median_ms / later.full_ms.median_ms
    joined, timed = merged.cut(wide.id), later.cut(wide.id)
    assert joined.head_ms is not None and timed.head_ms is not None
    assert joined.head_ms.median_ms == pytest.approx(timed.head_ms.median_ms * drift)
    priced = Planner(graph, merged, merged).candidates(Link(10e6, 10.0))
    assert any(p.cut == wide.id and p.source == "measured" for p in priced)
    with pytest.raises(ProfileError, match="another model"):
        first.with_cuts(replace(later, sha256="0" * 64))


def _cut_or_none(graph: ModelGraph, names: tuple[str, ...]) -> Cut | None:
    try:
        return cut_from_tensors(graph, names)
    except CutError:
        return None


def test_a_profiled_codec_is_the_one_a_runtime_runs_from_its_label():
    """A plan names codecs by label and the runtime parses the label: the settings the
    profile priced (zstd's level) must come back, or the plan prices one codec and the
    device runs another, twice as slow to encode."""
    from partitioner.profile import DEFAULT_CODECS, DELTA_CODECS
    from runtime.codec import CodecSpec

    for spec in (*DEFAULT_CODECS, *DELTA_CODECS):
        assert CodecSpec.parse(spec.label) == spec
