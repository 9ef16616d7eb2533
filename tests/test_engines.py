"""Engines: the table, the runtimes' parity with torch, INT8 loss, export, TensorRT set-up.

The model under test is the shipped ``loopline/models/defects.pt`` (or ``$LOOPLINE_TEST_MODEL``);
it is exported once per session into a temporary folder (ONNX, OpenVINO FP32 and INT8).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from loopline.engines import ENGINES, SUFFIXES, create_engine, engine_for
from loopline.engines.base import Detections
from loopline.engines.calibration import calibration_batches, calibration_frames
from loopline.engines.ops import match_instances
from loopline.engines.tensorrt_engine import TensorRTSettings
from loopline.training.train import architecture_problem

IMGSZ = 512
#: INT8 tolerance against torch FP32: measured 0.79-0.87 mean mask IoU, F1 0.89 (engines README)
INT8_MIN_MEAN_IOU = 0.70
INT8_MAX_COUNT_DIFF = 0.25  # fraction of instances
BF16_MIN_MEAN_IOU = 0.90


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def _model_pt() -> Path | None:
    env = os.environ.get("LOOPLINE_TEST_MODEL")
    if env:
        return Path(env)
    from loopline.models import MODEL_DIR

    p = MODEL_DIR / "defects.pt"
    return p if p.exists() else None


needs_model = pytest.mark.skipif(
    _model_pt() is None or not _has("ultralytics"),
    reason="no defects.pt (or LOOPLINE_TEST_MODEL) or no ultralytics",
)


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    # mixed, loops and line frames at the daemon's frame size; seed apart from calibration
    return calibration_frames(3, size=512, seed=1234)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The test model exported once: ONNX, OpenVINO FP32 and INT8."""
    import shutil

    from loopline.engines.export import export_onnx, export_openvino

    d = tmp_path_factory.mktemp("export")
    pt = d / "defects.pt"
    shutil.copyfile(_model_pt(), pt)
    out = {"pt": pt, "onnx": export_onnx(pt, imgsz=IMGSZ)}
    if _has("openvino"):
        out["openvino"] = export_openvino(out["onnx"], imgsz=IMGSZ)
        if _has("nncf"):
            out["openvino-int8"] = export_openvino(out["onnx"], imgsz=IMGSZ, int8=True,
                                                   calib_frames=24)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def reference(exported, frames) -> list[Detections]:
    dets = create_engine(exported["pt"], imgsz=IMGSZ)(frames)
    if sum(len(d) for d in dets) == 0:
        pytest.skip("the test model finds nothing in the test frames (untrained?)")
    return dets


def _agreement(ref: list[Detections], got: list[Detections]) -> tuple[float, list, list]:
    """Mean mask IoU over matched + unmatched instances (unmatched count 0), counts."""
    ious = []
    for r, g in zip(ref, got, strict=True):
        p = match_instances(r.masks, g.masks, min_iou=1e-6)
        ious += list(p[:, 2]) + [0.0] * (max(len(r), len(g)) - len(p))
    return float(np.mean(ious)), [len(r) for r in ref], [len(g) for g in got]


# ------------------------------------------------------------------------ the table


def test_engine_table_by_suffix(tmp_path):
    assert engine_for("m.pt") == "torch"
    assert engine_for("m.onnx") == "onnx"
    assert engine_for("m.xml") == "openvino"
    assert engine_for("m.engine") == "tensorrt"
    assert engine_for("ridge") == "ridge"
    ov = tmp_path / "m_openvino_model"
    ov.mkdir()
    (ov / "m.xml").write_text("")
    assert engine_for(ov) == "openvino"
    assert set(SUFFIXES.values()) | {"ridge"} == set(ENGINES)


def test_unknown_suffix_lists_supported(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_text("")
    with pytest.raises(ValueError, match=r"supported are suffixes \.pt, \.onnx, \.xml, \.engine"):
        create_engine(f)
    with pytest.raises(ValueError, match="choose one of torch, onnx, openvino"):
        create_engine(f, engine="tflite")


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="no model file"):
        create_engine("no-such-model")


@pytest.mark.parametrize(
    ("module", "suffix", "extra"),
    [("openvino", ".xml", "loopline[openvino]"), ("ultralytics", ".pt", "loopline[train]"),
     ("tensorrt", ".engine", "loopline[gpu]")],
)  # fmt: skip
def test_missing_runtime_names_the_extra(tmp_path, monkeypatch, module, suffix, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError
    f = tmp_path / f"m{suffix}"
    f.write_text("")
    engine = create_engine(f)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        engine.load()


def test_engine_options_are_validated():
    with pytest.raises(ValueError, match="imgsz must be a multiple of 32"):
        create_engine("ridge", imgsz=500)
    with pytest.raises(TypeError, match="unknown ridge options"):
        create_engine("ridge", sigma=3)


def test_shipped_model_brings_its_operating_point(tmp_path):
    from loopline.models import MODEL_DIR, SETTINGS, shipped_settings

    assert shipped_settings("dislocations") == SETTINGS["defects"]
    assert shipped_settings(MODEL_DIR / "defects.onnx") == SETTINGS["defects"]
    ov = MODEL_DIR / "defects_openvino_model"
    assert shipped_settings(ov) == shipped_settings(ov / "defects.xml") == SETTINGS["defects"]
    other = tmp_path / "defects.onnx"  # same name, not the shipped file
    other.write_bytes(b"")
    assert shipped_settings(other) == {}
    thr = SETTINGS["defects"]["mask_threshold"]
    if (MODEL_DIR / "defects.onnx").exists():
        assert create_engine("defects", engine="onnx").mask_threshold == thr
        assert create_engine(MODEL_DIR / "defects.onnx").mask_threshold == thr
        assert create_engine("loops", engine="onnx", mask_threshold=0.6).mask_threshold == 0.6
    assert create_engine(other).mask_threshold == 0.5  # ultralytics' rule for other models
    # the torch engine keeps ultralytics' post-processing: not given, and refused if asked
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"")
    assert create_engine(pt).__class__.__name__ == "TorchEngine"
    with pytest.raises(ValueError, match=r"torch engine keeps ultralytics' mask threshold 0\.5"):
        create_engine(pt, mask_threshold=0.3)
    with pytest.raises(ValueError, match=r"mask_threshold must lie in \(0, 1\)"):
        create_engine(other, mask_threshold=1.0)


def test_an_adapted_model_runs_at_the_input_size_it_was_trained_at(tmp_path, caplog):
    import json
    import logging

    from loopline.models import model_imgsz

    folder = tmp_path / "mine"
    (folder / "model_openvino_model").mkdir(parents=True)
    for f in ("model.onnx", "model.pt", "model_openvino_model/model.xml"):
        (folder / f).write_bytes(b"")
    record = folder / "adapt.json"
    record.write_text(json.dumps({"imgsz": 640, "operating_point": {"line_dedupe": 3.0}}))
    onnx = folder / "model.onnx"
    for m in (onnx, folder / "model.pt", folder / "model_openvino_model",
              folder / "model_openvino_model" / "model.xml"):  # fmt: skip
        assert model_imgsz(m) == 640, m
    assert model_imgsz("defects") is None  # the engines' default, 512, is the shipped model's
    assert model_imgsz(tmp_path / "other.onnx") is None
    eng = create_engine(onnx)
    assert (eng.imgsz, eng.line_dedupe) == (640, 3.0)
    assert create_engine(onnx, imgsz=512).imgsz == 512  # given explicitly: it wins
    assert create_engine(folder / "model.pt").imgsz == 640  # torch too
    record.write_text(json.dumps({"imgsz": 500}))
    with caplog.at_level(logging.WARNING, logger="loopline.models"):
        assert create_engine(onnx).imgsz == 512
    assert "ignoring imgsz 500 (expected a multiple of 32)" in caplog.text


def test_serve_and_analyze_run_an_onnx_file_in_openvino_where_installed(tmp_path, monkeypatch):
    """An adapted 640-px model keeps up with a 25 fps camera in OpenVINO and not in ONNX Runtime
    (README, adapt section): the live paths run ``.onnx`` files in OpenVINO, ``eval`` does not."""
    import shutil

    from loopline import engines
    from loopline.analysis.analyze import AnalyzeOptions, _make_detector
    from loopline.daemon.config import load_config
    from loopline.daemon.stages.engine import make_engine
    from loopline.engines import live_runtime
    from loopline.models import MODEL_DIR

    pytest.importorskip("openvino")
    onnx = tmp_path / "mine.onnx"
    shutil.copy(MODEL_DIR / "defects.onnx", onnx)
    assert live_runtime(onnx) == "openvino"
    assert live_runtime(tmp_path / "none.onnx") is None  # not a file: create_engine says so
    assert live_runtime(tmp_path / "net.pt") is None and live_runtime("defects") is None
    assert create_engine(onnx).name == "onnx"  # eval: the suffix's runtime, as measured
    cfg = load_config(overrides={"engine.model": str(onnx), "engine.factory": ""})
    assert make_engine(cfg).name == "openvino"
    cfg = load_config(overrides={"engine.model": str(onnx), "engine.factory": "",
                                 "engine.engine": "onnx"})  # fmt: skip
    assert make_engine(cfg).name == "onnx"  # named: it wins
    made = []
    real = engines.create_engine
    monkeypatch.setattr(engines, "create_engine", lambda *a, **k: made.append(real(*a, **k))
                        or made[-1])  # fmt: skip
    _make_detector(AnalyzeOptions(model=str(onnx)))
    _make_detector(AnalyzeOptions(model=str(onnx), engine="onnx"))
    assert [e.name for e in made] == ["openvino", "onnx"]


# ------------------------------------------------------------------------ ridge


def test_the_score_threshold_can_be_one_per_class():
    """``conf`` as (dislocation, loop): the runtime keeps candidates down to the lower one and
    each class's own applies after it; the shipped model brings its operating point's pair
    (lines 0.15, loops 0.25, chosen on validation sets: the model card), which a single value
    given explicitly replaces."""
    from loopline.synth.params import load_preset
    from loopline.synth.render import render_frame
    from loopline.synth.scene import sample_scene

    frame = render_frame(sample_scene(load_preset("mixed", {"width": 256, "height": 256}), 3,
                                      0)).image  # fmt: skip
    (both,) = create_engine("ridge")([frame])
    (lines,) = create_engine("ridge", conf=(0.0, 1.0))([frame])  # no loop scores 1.0 or more
    assert (both.classes == 1).sum() >= 1 and (lines.classes == 1).sum() == 0
    assert (lines.classes == 0).sum() == (both.classes == 0).sum() >= 1
    e = create_engine("defects", engine="onnx") if _has("onnxruntime") else None
    if e is not None:
        assert (e.conf, e.class_conf) == (0.15, (0.15, 0.25))
        assert "conf=(0.15, 0.25)" in repr(e)
        e = create_engine("defects", engine="onnx", conf=0.3)
        assert (e.conf, e.class_conf) == (0.3, None)
    with pytest.raises(ValueError, match=r"conf must lie in \[0, 1\], one value or one per"):
        create_engine("ridge", conf=(0.1, 0.2, 0.3))


def test_ridge_finds_lines_and_loops():
    from loopline.synth.params import load_preset
    from loopline.synth.render import render_frame
    from loopline.synth.scene import sample_scene

    p = load_preset("mixed", {"width": 256, "height": 256})
    frame = render_frame(sample_scene(p, 3, 0)).image
    (d,) = create_engine("ridge")([frame])
    assert d.shape == (256, 256)
    assert (d.classes == 0).sum() >= 1 and (d.classes == 1).sum() >= 1
    assert np.all((d.scores > 0) & (d.scores < 1))
    assert d.masks.any(axis=(1, 2)).all()
    assert set(d.timings_ms) == {"preprocess", "inference", "postprocess"}
    (blank,) = create_engine("ridge")([np.full((64, 64), 128, np.uint8)])
    assert len(blank) == 0


# ------------------------------------------------------------------------ TensorRT (no GPU)


def test_tensorrt_settings_and_profile():
    s = TensorRTSettings()
    assert s.fp16 and not s.int8
    assert s.profile_shapes() == {"min": (1, 3, 512, 512), "opt": (4, 3, 512, 512),
                                  "max": (8, 3, 512, 512)}  # fmt: skip
    assert s.workspace_bytes == 2 << 30
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        TensorRTSettings(min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="calib_batch 16 must lie"):
        TensorRTSettings(int8=True, calib_batch=16)


def test_calibration_batches_are_deterministic_network_inputs():
    a = list(calibration_batches(5, batch=2, imgsz=256, size=256, seed=3))
    b = list(calibration_batches(5, batch=2, imgsz=256, size=256, seed=3))
    assert len(a) == 2  # the incomplete last batch is dropped
    assert a[0].shape == (2, 3, 256, 256) and a[0].dtype == np.float32
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0 and a[0].std() > 0.01
    np.testing.assert_array_equal(a[1], b[1])


@needs_model
def test_onnx_export_is_what_tensorrt_needs(exported):
    import onnx

    m = onnx.load(str(exported["onnx"]))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch for the optimisation profile
    assert dims[1].dim_value == 3
    assert len(m.graph.output) == 2  # raw head + prototypes, no NMS in the graph


@pytest.mark.gpu
@needs_model
@pytest.mark.parametrize("int8", [False, True])
def test_tensorrt_engine_matches_torch(request, tmp_path, int8):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from loopline.engines.tensorrt_engine import build_engine

    exported, frames = request.getfixturevalue("exported"), request.getfixturevalue("frames")
    reference = request.getfixturevalue("reference")
    settings = TensorRTSettings(imgsz=IMGSZ, int8=int8, calib_frames=64)
    eng = build_engine(exported["onnx"], tmp_path / "m.engine", settings)
    got = create_engine(eng, imgsz=IMGSZ)(frames)
    iou, n_ref, n_got = _agreement(reference, got)
    if int8:
        assert iou >= INT8_MIN_MEAN_IOU
        return
    assert iou >= 0.95 and n_ref == n_got


# ------------------------------------------------------------------------ parity with torch


@needs_model
@pytest.mark.parametrize(
    ("name", "opts"), [("onnx", {}), ("openvino", {"precision": "f32"})], ids=["onnx", "openvino"]
)
def test_fp32_runtimes_match_torch(exported, frames, reference, name, opts):
    if name not in exported:
        pytest.skip(f"{name} not installed")
    got = create_engine(exported[name], imgsz=IMGSZ, **opts)(frames)
    iou, n_ref, n_got = _agreement(reference, got)
    assert n_got == n_ref
    assert iou >= 0.98, f"mean mask IoU {iou:.4f}"
    for r, g in zip(reference, got, strict=True):
        np.testing.assert_array_equal(np.sort(r.classes), np.sort(g.classes))
        np.testing.assert_allclose(np.sort(r.scores), np.sort(g.scores), atol=0.02)
    # batching changes nothing
    batched = create_engine(exported[name], imgsz=IMGSZ, max_batch=2, **opts)(frames)
    assert [len(d) for d in batched] == n_got


@needs_model
@pytest.mark.skipif(architecture_problem("yolov8n-seg-p2") is not None,
                    reason=architecture_problem("yolov8n-seg-p2") or "")
def test_p2_architecture_runs_on_onnx_like_torch(frames, tmp_path):
    """A model of the P2 architecture (prototypes at 1/2 of the input, four head levels) goes
    through export and the shared decoder unchanged: the decoder takes the prototype stride from
    their shape. Its weights are the test model's, carried over by ``transfer_weights``."""
    import torch
    from ultralytics import YOLO

    from loopline.engines.export import export_onnx
    from loopline.training.train import architecture_yaml, transfer_weights

    p2 = YOLO(architecture_yaml("yolov8n-seg-p2"))
    transfer_weights(p2.model, YOLO(str(_model_pt())).model)
    for branch in p2.model.model[-1].cv3:  # the class branches start from scratch: wake them up
        branch[-1].bias.data.fill_(-1.0)
    pt = tmp_path / "p2.pt"
    torch.save({"model": p2.model, "train_args": {}}, pt)
    onnx = export_onnx(pt, imgsz=256)
    # Whole frames (letterbox): this is about the decoder; tiling has tests of its own.
    opts = {"imgsz": 256, "conf": 0.25, "max_det": 20, "inference": "letterbox"}
    ref = create_engine(pt, **opts)(frames)
    got = create_engine(onnx, mask_threshold=0.5, **opts)(frames)
    assert sum(len(d) for d in ref) > 0
    assert got[0].masks.shape[1:] == frames[0].shape
    iou, n_ref, n_got = _agreement(ref, got)
    assert n_got == n_ref
    assert iou >= 0.95, f"mean mask IoU {iou:.4f}"


@needs_model
def test_openvino_default_precision_close_to_torch(exported, frames, reference):
    """OpenVINO's own choice (bf16 on AMX CPUs, else f32): close, not equal."""
    if "openvino" not in exported:
        pytest.skip("openvino not installed")
    got = create_engine(exported["openvino"], imgsz=IMGSZ)(frames)
    iou, n_ref, n_got = _agreement(reference, got)
    assert iou >= BF16_MIN_MEAN_IOU, f"mean mask IoU {iou:.3f}"
    assert abs(sum(n_got) - sum(n_ref)) <= INT8_MAX_COUNT_DIFF * sum(n_ref) + 1


@needs_model
def test_openvino_int8_within_tolerance(exported, frames, reference):
    if "openvino-int8" not in exported:
        pytest.skip("openvino/nncf not installed")
    got = create_engine(exported["openvino-int8"], imgsz=IMGSZ)(frames)
    iou, n_ref, n_got = _agreement(reference, got)
    assert iou >= INT8_MIN_MEAN_IOU, f"mean mask IoU {iou:.3f}"
    assert abs(sum(n_got) - sum(n_ref)) <= INT8_MAX_COUNT_DIFF * sum(n_ref) + 1


@needs_model
@pytest.mark.slow
def test_onnxruntime_int8_within_tolerance(exported, frames, reference, tmp_path):
    from loopline.engines.export import quantize_onnx

    q = quantize_onnx(exported["onnx"], imgsz=IMGSZ, out=tmp_path, calib_frames=8)
    assert q.name == "defects.int8.onnx"
    got = create_engine(q, imgsz=IMGSZ)(frames)
    iou, n_ref, n_got = _agreement(reference, got)
    assert iou >= INT8_MIN_MEAN_IOU, f"mean mask IoU {iou:.3f}"
    assert abs(sum(n_got) - sum(n_ref)) <= INT8_MAX_COUNT_DIFF * sum(n_ref) + 1


# ------------------------------------------------------------------------ the command


@needs_model
def test_export_command_writes_next_to_model_or_out(exported, tmp_path):
    from loopline.cli import main

    assert main(["export", "--model", str(exported["onnx"]), "--format", "openvino",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    xml = tmp_path / "defects_openvino_model" / "defects.xml"
    assert xml.exists() and xml.with_suffix(".bin").exists()
    assert engine_for(xml.parent) == "openvino"


def test_export_command_user_errors(tmp_path, capsys):
    from loopline.cli import main

    assert main(["export", "--model", str(tmp_path / "nope.pt"), "--format", "onnx"]) == 2
    assert "no model file" in capsys.readouterr().err
    if not _has("tensorrt"):
        f = tmp_path / "m.onnx"
        f.write_text("")
        assert main(["export", "--model", str(f), "--format", "engine"]) == 2
        assert "loopline[gpu]" in capsys.readouterr().err


def test_onnx_engine_names_a_bad_model_file(tmp_path):
    folder = tmp_path / "m.onnx"  # e.g. `loopline export --out m.onnx` makes a folder
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="expected an ONNX model file, found a folder"):
        create_engine(folder).load()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx is not an ONNX model"):
        create_engine(junk).load()
