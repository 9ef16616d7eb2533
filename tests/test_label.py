"""``loopline label`` without a browser: frames, the JSON API, the dataset it writes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from loopline.viewers.label import LabelServer, proposals_from
from loopline.viewers.label_store import (
    LabelError,
    LabelStore,
    collect_frames,
    parse_labels,
)

LINE = {"kind": "line", "points": [[10, 10], [40, 50], [60, 100]], "width": 6}
LOOP = {"kind": "ellipse", "center": [90, 40], "axes": [20, 12], "angle_deg": 30}
POLY = {"kind": "polygon", "points": [[100, 100], [120, 100], [110, 120]]}
SLIP = {"points": [[0, 120], [128, 110]], "width": 4}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 128x128 M2 frames (a loopline synth dataset)."""
    from loopline.synth.generate import generate

    out = tmp_path_factory.mktemp("label-synth")
    generate(out, preset="M2", count=2, seed=0, jobs=1, progress=False,
             overrides={"width": 128, "height": 128})  # fmt: skip
    return out


def _request(url: str, body: bytes | None = None, *, ctype: str = "application/json",
             headers: dict[str, str] | None = None) -> tuple[int, dict | bytes]:  # fmt: skip
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            code, data, kind = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        code, data, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return code, json.loads(data) if "json" in kind else data


@pytest.fixture
def server(synth: Path, tmp_path: Path):
    srv = LabelServer(collect_frames(synth), tmp_path / "out", label_width=6.0).start()
    try:
        yield srv
    finally:
        srv.close()


def _post(srv: LabelServer, stem: str, doc: dict) -> tuple[int, dict]:
    return _request(f"{srv.url}api/labels/{stem}", json.dumps(doc).encode())


# ----------------------------------------------------------------------------- frames


def test_frames_from_folder_dataset_and_every(synth: Path) -> None:
    a = collect_frames(synth)  # a dataset folder: its images/
    b = collect_frames(synth / "images")
    assert [f.stem for f in a] == [f.stem for f in b] == ["M2-0-00000", "M2-0-00001"]
    assert a[0].load().shape == (128, 128)
    assert [f.stem for f in collect_frames(synth, every=2)] == ["M2-0-00000"]
    with pytest.raises(ValueError, match="every"):
        collect_frames(synth, every=0)
    with pytest.raises(FileNotFoundError):
        collect_frames(synth / "nothing")


def test_frames_from_a_video_every_nth(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "movie.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(7):
        vw.write(np.full((48, 64, 3), 30 * i, np.uint8))
    vw.release()
    frames = collect_frames(path, every=3)
    assert [f.stem for f in frames] == ["movie_000000", "movie_000003", "movie_000006"]
    img = frames[1].load()
    assert img.shape == (48, 64) and abs(float(img.mean()) - 90) < 6


def test_frames_from_a_run_folder(tmp_path: Path, synth: Path) -> None:
    run = tmp_path / "run"
    (run / "raw").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    for i in range(3):
        np.save(run / "raw" / f"cam_{i:06d}.npy", np.full((16, 16), i, np.uint16))
    frames = collect_frames(run)
    assert [f.stem for f in frames] == ["cam_000000", "cam_000001", "cam_000002"]
    assert frames[2].load().dtype == np.uint16
    # no raw frames: the input the run names (loopline analyze)
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "summary.json").write_text(json.dumps({"input": str(synth)}))
    assert len(collect_frames(run2)) == 2
    run3 = tmp_path / "run3"
    run3.mkdir()
    (run3 / "series.csv").write_text("series\n")
    with pytest.raises(FileNotFoundError, match="holds no frames"):
        collect_frames(run3)


# ----------------------------------------------------------------------------- labels


def test_parse_labels_normalises_and_names_the_bad_field() -> None:
    got = parse_labels(json.dumps({"instances": [LINE, LOOP | {"axes": [8, 20]}, POLY],
                                   "slip_traces": [SLIP], "proposals_done": ["p1", "p1"]}),
                       128, 128)  # fmt: skip
    assert [i["class"] for i in got["instances"]] == [0, 1, 1]
    assert got["instances"][1]["axes"] == [20, 8] and got["instances"][1]["angle_deg"] == 120
    assert got["slip_traces"] == [{"points": [[0, 120], [128, 110]], "width": 4.0,
                                   "from": "drawn"}]  # fmt: skip
    assert got["proposals_done"] == ["p1"]
    bad = [
        ("{", "not JSON"),
        (
            '{"instances": [{"kind": "line", "points": [[1, 1], [NaN, 2]], "width": 6}]}',
            r"instances\[0\].points\[1\]\[0\] must be a finite number",
        ),
        (json.dumps({"instances": [LINE | {"width": 100}]}), r"instances\[0\].width must lie"),
        (json.dumps({"instances": [LINE | {"class": 1}]}), "a line is class 0"),
        (json.dumps({"instances": [{"kind": "blob"}]}), "kind must be"),
        (json.dumps({"instances": [LINE | {"points": [[5, 5]]}]}), "at least 2 points"),
        (json.dumps({"instances": [LINE | {"points": [[5, 5], [5, 5]]}]}), "zero length"),
        (json.dumps({"instances": [POLY | {"points": [[1, 1], [2, 2], [3, 3]]}]}), "zero area"),
        (json.dumps({"instances": [LOOP | {"axes": [0, 1]}]}), "axes must lie"),
        (json.dumps({"instances": [LOOP | {"center": [300, 4]}]}), "outside the 128x128"),
        (json.dumps({"instances": [LINE | {"colour": "red"}]}), "unknown key 'colour'"),
        (json.dumps({"slip_traces": [SLIP | {"from": "../x"}]}), "from must be"),
        (json.dumps({"labels": []}), "unknown key 'labels'"),
        (json.dumps([1]), "the body must be an object"),
    ]
    for body, msg in bad:
        with pytest.raises(LabelError, match=msg) as e:
            parse_labels(body, 128, 128)
        assert "\n" not in str(e.value)


def test_save_load_round_trip_and_dataset(server: LabelServer, tmp_path: Path) -> None:
    from loopline.datasets.layout import read_yolo_labels
    from loopline.evaluation.data import Dataset

    code, frames = _request(f"{server.url}api/frames")
    assert code == 200 and [f["labelled"] for f in frames["frames"]] == [False, False]
    assert frames["label_width"] == 6.0 and frames["model"] is None
    code, empty = _request(f"{server.url}api/labels/M2-0-00001")
    assert code == 200 and empty["saved"] is False and empty["instances"] == []
    doc = {"instances": [LINE, LOOP, POLY], "slip_traces": [SLIP], "proposals_done": []}
    code, res = _post(server, "M2-0-00001", doc)
    assert code == 200 and res["instances"] == 3 and res["slip_traces"] == 1, res
    code, back = _request(f"{server.url}api/labels/M2-0-00001")
    assert back["saved"] is True
    assert back["instances"] == parse_labels(doc, 128, 128)["instances"]
    assert back["slip_traces"][0]["points"] == SLIP["points"]

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "coco.json",
        "data.yaml",
        "distractors",
        "images",
        "label.json",
        "labels",
        "polylines",
    ]
    assert not list(out.rglob("*.tmp*")) and not (out / ".tmp").exists()
    pairs = read_yolo_labels(out / "labels" / "M2-0-00001.txt", 128, 128)
    assert [c for c, _ in pairs] == [0, 1, 1]  # the slip trace is no instance
    line_poly = pairs[0][1]
    assert line_poly[:, 0].min() > 5 and line_poly[:, 1].max() < 104  # buffered by 3 px
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dislocation", "loop"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2]
    assert coco["images"][0]["file_name"] == "images/M2-0-00001.png"
    assert "names:" in (out / "data.yaml").read_text()
    poly = json.loads((out / "polylines" / "M2-0-00001.json").read_text())
    assert poly["instances"][0]["points"] == LINE["points"] and poly["width"] == 128

    ds = Dataset(out)  # what loopline eval reads
    assert len(ds) == 1
    fr = ds.frame(0)
    assert fr.classes.tolist() == [0, 1, 1] and fr.masks.shape == (3, 128, 128)
    assert fr.masks[0].sum() > 6 * 100  # about 6 px x 106 px
    assert fr.distractors is not None and fr.distractors[115, 64]
    assert not fr.distractors[10, 10]

    # a second edit replaces the frame's labels; deleting every slip trace drops its mask
    code, res = _post(server, "M2-0-00001", {"instances": [LOOP]})
    assert code == 200
    assert not (out / "distractors" / "M2-0-00001.png").exists()
    assert Dataset(out).frame(0).classes.tolist() == [1]


def test_labels_survive_a_restart(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with LabelServer(collect_frames(synth), out) as srv:
        assert _post(srv, "M2-0-00000", {"instances": [LINE]})[0] == 200
        assert _post(srv, "M2-0-00001", {"instances": [POLY], "slip_traces": [SLIP]})[0] == 200
    with LabelServer(collect_frames(synth), out) as srv:
        _, frames = _request(f"{srv.url}api/frames")
        assert [(f["instances"], f["slip_traces"]) for f in frames["frames"]] == [(1, 0), (1, 1)]
        _, back = _request(f"{srv.url}api/labels/M2-0-00001")
        assert back["instances"][0]["kind"] == "polygon" and len(back["slip_traces"]) == 1
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2


def test_bad_requests_get_a_one_line_error(server: LabelServer, tmp_path: Path) -> None:
    url = server.url
    before = sorted(p for p in tmp_path.rglob("*"))
    cases = [
        (_request(f"{url}api/labels/M2-0-00000", b"{not json"), 400, "not JSON"),
        (_request(f"{url}api/labels/M2-0-00000", b'{"instances": 3}'), 400, "must be a list"),
        (_request(f"{url}api/labels/M2-0-00000", b"{}", ctype="text/plain"), 415, "json"),
        (_request(f"{url}api/labels/..%2F..%2Fescape", b"{}"), 400, "plain file name"),
        (_request(f"{url}api/labels/..", b"{}"), 400, "plain file name"),
        (_request(f"{url}api/labels/%2Fetc%2Fpasswd"), 400, "plain file name"),
        (_request(f"{url}api/frame/..%2F..%2Fimages%2FM2-0-00000.png"), 400, "plain file name"),
        (_request(f"{url}api/labels/not-a-frame", b"{}"), 404, "no frame named"),
        (_request(f"{url}api/proposals/not-a-frame"), 404, "no frame named"),
        (_request(f"{url}api/nothing"), 404, "no such page"),
        (_request(f"{url}api/labels/M2-0-00000", b"{}", headers={"Host": "evil.example:80"}),
         403, "Host not allowed"),
        (_request(f"{url}api/labels/M2-0-00000", b"{}",
                  headers={"Origin": "http://evil.example"}), 403, "another site"),
    ]  # fmt: skip
    for (code, body), want, msg in cases:
        assert code == want, (want, msg, body)
        assert msg in body["error"] and "\n" not in body["error"], body
    # nothing was written anywhere: not in DIR, not beside it
    assert sorted(p for p in tmp_path.rglob("*")) == before
    code, png = _request(f"{url}api/frame/M2-0-00000.png")
    assert code == 200 and png[:4] == b"\x89PNG"


def test_refuses_a_dataset_it_did_not_make(synth: Path) -> None:
    with pytest.raises(FileExistsError, match="not made by loopline label"):
        LabelStore(synth)


def test_another_frame_of_the_same_name_is_refused(synth: Path, tmp_path: Path) -> None:
    import cv2

    out = tmp_path / "out"
    with LabelServer(collect_frames(synth), out) as srv:
        assert _post(srv, "M2-0-00000", {"instances": [LINE]})[0] == 200
        assert _post(srv, "M2-0-00000", {"instances": [LINE, POLY]})[0] == 200
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "M2-0-00000.png"), np.zeros((128, 128), np.uint8))
    with LabelServer(collect_frames(other), out) as srv:
        code, body = _post(srv, "M2-0-00000", {"instances": []})
    assert code == 409 and "already holds a different frame named M2-0-00000" in body["error"]
    assert len(json.loads((out / "polylines" / "M2-0-00000.json").read_text())["instances"]) == 2
    assert cv2.imread(str(out / "images" / "M2-0-00000.png")).any()


def test_a_hand_edited_polylines_file_is_checked(
    synth: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with LabelServer(collect_frames(synth), out) as srv:
        assert _post(srv, "M2-0-00000", {"instances": [LINE]})[0] == 200
        assert _post(srv, "M2-0-00001", {"instances": [POLY]})[0] == 200
    p = out / "polylines" / "M2-0-00000.json"
    d = json.loads(p.read_text())
    d["instances"][0]["points"][0] = [1e9, 3]
    p.write_text(json.dumps(d))
    store = LabelStore(out)
    assert sorted(store.docs) == ["M2-0-00001"]
    assert "ignoring" in caplog.text and "outside the 128x128 frame" in caplog.text


def test_proposals_from_detections_and_the_ridge_engine(synth: Path, tmp_path: Path) -> None:
    from loopline.engines import Detections, create_engine

    masks = np.zeros((2, 64, 64), bool)
    masks[0, 30:34, 5:55] = True  # a line 50 px long
    yy, xx = np.mgrid[:64, :64]
    masks[1] = ((xx - 20) / 8.0) ** 2 + ((yy - 12) / 5.0) ** 2 <= 1
    det = Detections(masks=masks, boxes=np.array([[5, 30, 55, 34], [12, 7, 28, 17]], np.float32),
                     scores=np.array([0.9, 0.8], np.float32), classes=np.array([0, 1]))  # fmt: skip
    line, loop = proposals_from(det, label_width=5.0)
    assert line["id"] == "p0" and line["kind"] == "line" and line["width"] == 5.0
    pts = np.array(line["points"])
    assert 2 <= len(pts) <= 10 and abs(np.ptp(pts[:, 0]) - 50) < 2 and np.ptp(pts[:, 1]) < 1
    assert loop["kind"] == "ellipse" and abs(loop["axes"][0] - 17) < 2.5
    assert abs(loop["center"][0] - 20) < 1 and min(loop["angle_deg"], 180 - loop["angle_deg"]) < 5
    # every proposal is a valid label as it stands (accepting it needs no edit)
    keep = {"line": ("kind", "points", "width"), "ellipse": ("kind", "center", "axes",
                                                              "angle_deg")}  # fmt: skip
    parse_labels({"instances": [{k: p[k] for k in keep[p["kind"]]} for p in (line, loop)]},
                 64, 64)  # fmt: skip

    srv = LabelServer(collect_frames(synth), tmp_path / "out", engine=create_engine("ridge"),
                      model="ridge")  # fmt: skip
    with srv:
        code, got = _request(f"{srv.url}api/proposals/M2-0-00001")
        assert code == 200 and got["model"] == "ridge"
        assert got["proposals"], "ridge found nothing on an M2 frame"
        assert all(p["kind"] == "line" for p in got["proposals"])
        doc = {"instances": [{k: p[k] for k in ("kind", "points", "width")} | {"from": "proposal"}
                             for p in got["proposals"]],
               "proposals_done": [p["id"] for p in got["proposals"]]}  # fmt: skip
        code, res = _post(srv, "M2-0-00001", doc)
        assert code == 200, res
        _, back = _request(f"{srv.url}api/labels/M2-0-00001")
        assert back["proposals"] == {"model": "ridge", "done": sorted(doc["proposals_done"])}


def test_cli_errors(tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture) -> None:
    from loopline.cli import main

    assert main(["label", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["label", str(synth), "--out", str(synth), "--model", "none"]) == 2
    assert "not made by loopline label" in capsys.readouterr().err
    assert main(["label", str(synth), "--out", str(tmp_path / "o"), "--every", "0"]) == 2
    assert main(["label", str(synth), "--out", str(tmp_path / "o"), "--label-width", "0"]) == 2
    assert main(["label", str(synth), "--out", str(tmp_path / "o"), "--model", "x.bin"]) == 2
    assert "--model x.bin" in capsys.readouterr().err
    code = main(["label", str(synth), "--out", str(tmp_path / "o"), "--model", "none",
                 "--duration", "0.3"])  # fmt: skip
    assert code == 0 and "serving http://127.0.0.1:" in capsys.readouterr().out


def test_the_model_runs_once_per_frame_and_prefetches_one(tmp_path: Path, synth: Path) -> None:
    import shutil
    import time

    from loopline.engines import create_engine

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        shutil.copy(synth / "images" / f"M2-0-0000{i % 2}.png", folder / f"f{i}.png")
    ridge = create_engine("ridge")
    calls: list[int] = []

    def engine(frames):  # the real engine, counted
        calls.append(len(frames))
        return ridge(frames)

    with LabelServer(collect_frames(folder), tmp_path / "out", engine=engine,
                     model="ridge") as srv:  # fmt: skip
        for _ in range(2):
            assert _request(f"{srv.url}api/proposals/f0")[0] == 200
        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert calls == [1, 1]  # f0 once, f1 in the background, nothing further
        assert sorted(srv._proposals) == ["f0", "f1"]
