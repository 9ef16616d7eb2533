"""``loopline analyze --cluster`` (issue 21): a real ``LocalCluster`` of 2 worker processes gives
the run folder of a single-machine ``analyze``; a killed worker's chunk is redone; a chunk that
keeps failing is named and leaves no summary.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from loopline.analysis.analyze import AnalyzeOptions, analyze  # noqa: E402
from loopline.analysis.cluster import (  # noqa: E402
    ChunkError,
    analyze_chunk,
    analyze_cluster,
    chunk_ranges,
    connect,
    read_frames,
)
from loopline.analysis.sources import open_source  # noqa: E402
from loopline.cli import main  # noqa: E402
from loopline.synth.generate import generate  # noqa: E402

TRUTH = AnalyzeOptions(model="truth")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """24 frames with pile-ups, loops and stage drift (so the seams carry a drift step)."""
    out = tmp_path_factory.mktemp("clip")
    generate(out, preset="mixed", count=1, seed=3, video=True, frames=24,
             overrides={"width": 256, "height": 256, "lead_pinned_prob": 0.0,
                        "stage_drift": [0.2, 0.3], "loops": [3, 5], "pileups": 1,
                        "dislocations": [4, 6]},
             progress=False, jobs=1)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def single(video, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    analyze(video, out, options=TRUTH)
    return out


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=50) as lc, \
            distributed.Client(lc) as c:  # fmt: skip
        yield c


def assert_same_run(a: Path, b: Path, *, series: bool = True) -> None:
    """Same rows and values (float tolerance); track ids may differ, the partition may not."""
    t = {name: (pd.read_csv(a / f"{name}.csv"), pd.read_csv(b / f"{name}.csv"))
         for name in ("series", "tracks", "pairs", "track_summary")}  # fmt: skip
    for name, (x, y) in t.items():
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
    # one (kind, id) -> (kind, id) map from the object rows: a bijection <=> same partition
    x, y = t["tracks"]
    ids: dict[tuple[str, int], tuple[str, int]] = {}
    for k, i, j in zip(x["kind"], x["track_id"], y["track_id"], strict=True):
        assert ids.setdefault((k, i), (k, j)) == (k, j), f"{k} track {i} split"
    assert len(set(ids.values())) == len(ids), "tracks merged"
    piles = dict(zip(x["pileup_id"], y["pileup_id"], strict=True))
    assert len(set(piles.values())) == len(piles), "pile-ups merged"
    for name, (x, y) in t.items():
        x, y = x.copy(), y.copy()
        kinds = x["kind"] if "kind" in x else pd.Series(["line"] * len(x))
        for c in ("track_id", "partner_id"):
            if c in x:
                x[c] = [ids[(k, i)][1] for k, i in zip(kinds, x[c], strict=True)]
        if "pileup_id" in x:
            x["pileup_id"] = [piles.get(i, i) for i in x["pileup_id"]]
        if name == "track_summary":  # ended tracks come out in id order within a frame
            key = ["kind", "track_id"]
            x, y = (d.sort_values(key).reset_index(drop=True) for d in (x, y))
        for c in x.columns:
            if (c.startswith("t_") and c.endswith("_ms")) or (c == "series" and not series):
                continue  # stage times; the series id (the input's stem)
            if x[c].dtype.kind == "f" or y[c].dtype.kind == "f":
                np.testing.assert_allclose(x[c].to_numpy(float), y[c].to_numpy(float),
                                           rtol=1e-9, atol=1e-9, err_msg=f"{name}.{c}")  # fmt: skip
            else:
                assert x[c].fillna("").tolist() == y[c].fillna("").tolist(), f"{name}.{c}"


def _meta(f):
    return f.index, f.time_s, f.name, f.labels


def test_chunks_and_frame_ranges(video, tmp_path):
    assert chunk_ranges(24, 8) == [(0, 8), (8, 16), (16, None)]
    assert chunk_ranges(20, 8, open_end=False) == [(0, 8), (8, 16), (16, 20)]
    assert chunk_ranges(0, 8) == [(0, None)]
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        chunk_ranges(10, 0)
    # the workers' direct reads equal iterating the source (synthetic dataset, image folder)
    folder = tmp_path / "folder"
    shutil.copytree(video / "images", folder / "images")
    shutil.copytree(video / "labels", folder / "labels")
    for path in (video, folder / "images"):
        src = open_source(path)
        every = list(src)
        for lo, hi in ((0, 5), (7, 12), (20, None)):
            got = read_frames(src, lo, hi)
            assert [_meta(f) for f in got] == [_meta(f) for f in every[lo:hi]]
            for f, g in zip(got, every[lo:hi], strict=True):
                np.testing.assert_array_equal(f.image, g.image)


@pytest.mark.slow
def test_cli_local_cluster_equals_single_machine(video, single, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["analyze", str(video), "--out", str(run), "--model", "truth", "--cluster",
            "local:2", "--chunk", "8"]  # fmt: skip
    assert main(argv) == 0
    assert "analysed 24 frames" in capsys.readouterr().out
    assert_same_run(single, run)
    s = json.loads((run / "summary.json").read_text())
    ref = json.loads((single / "summary.json").read_text())
    assert s["frames"] == 24 and s["cluster"]["chunks"] == 3
    for k in ("length_re", "spacing_re", "velocity_re", "loop_axis_re", "id_switches"):
        assert s[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert s["tables"] == ref["tables"]
    # several inputs without --cluster: a one-line error
    assert main(["analyze", str(video), str(video), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_scatter_and_several_inputs(video, single, client, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(video, other)
    out = tmp_path / "runs"
    got = analyze_cluster([video, other], out, cluster=client, options=TRUTH, chunk=7,
                          scatter=True)  # fmt: skip
    assert sorted(Path(k).name for k in got) == sorted([video.name, "other"])
    for name in (video.name, "other"):
        assert_same_run(single, out / name, series=name == video.name)
    assert not client.status == "closed"  # a client given is left open


@pytest.mark.slow
def test_killed_worker_chunk_is_redone(video, single, client, tmp_path):
    marker = tmp_path / "killed"

    def dies_once(chunk, *args):  # a local function: cloudpickle sends it by value
        if chunk.start == 8 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-chunk; its nanny starts a new one
        return analyze_chunk(chunk, *args)

    run = tmp_path / "run"
    analyze_cluster(video, run, cluster=client, options=TRUTH, chunk=8, chunk_fn=dies_once)
    assert marker.exists()
    assert_same_run(single, run)
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_failing_chunk_is_named_and_no_summary(video, client, tmp_path):
    def fails(chunk, *args):
        if chunk.start == 8:
            raise OSError("disk gone")
        if chunk.start == 0:  # done after the failure: still written, in order
            import time

            time.sleep(1.0)
        return analyze_chunk(chunk, *args)

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")  # an old run's: must not survive
    with pytest.raises(ChunkError, match=rf"{video.name} frames 8-15: OSError: disk gone"):
        analyze_cluster(video, run, cluster=client, options=TRUTH, chunk=8, chunk_fn=fails)
    assert not (run / "summary.json").exists()
    assert len(pd.read_csv(run / "series.csv")) == 8  # the frames before it, closed
    assert issubclass(ChunkError, RuntimeError)  # `loopline analyze` turns it into exit 2


@pytest.mark.slow
def test_ridge_engine_on_workers_equals_single_machine(video, client, tmp_path):
    opt = AnalyzeOptions(model="ridge", max_frames=14)
    analyze(video, tmp_path / "single", options=opt)
    analyze_cluster(video, tmp_path / "run", cluster=client, options=opt, chunk=5)
    assert_same_run(tmp_path / "single", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["frames"] == 14

    def models() -> int:
        from loopline.analysis import cluster

        return sum("ridge" in key[0] for key in cluster._DETECTORS)

    assert set(client.run(models).values()) <= {0, 1}  # loaded once per worker, kept


def test_local_cluster_listens_on_loopback_only():
    """Dask pickles tasks and results: a local:N cluster (scheduler, workers, dashboard) must
    not be reachable from another machine."""
    client, lc = connect("local:1")
    try:
        info = client.scheduler_info()
        addrs = [info["address"], *info["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addrs), addrs
        assert "127.0.0.1" in client.dashboard_link
    finally:
        client.close()
        lc.close()
