"""Loop score voting (engine option ``loop_vote``, ``loopline/engines/votes.py``)."""

from pathlib import Path

import numpy as np
import pytest

from loopline.engines import create_engine
from loopline.engines.base import Detections, Engine
from loopline.engines.votes import VOTE_FLOOR, vote_loops

H, W = 48, 64
SHIPPED_ONNX = Path(__file__).resolve().parents[1] / "loopline" / "models" / "defects.onnx"


def _det(rows, shape=(H, W)):
    """Detections from (class, score, x0, y0, x1, y1) rows, box-filling masks."""
    masks = np.zeros((len(rows), *shape), bool)
    for k, (_, _, x0, y0, x1, y1) in enumerate(rows):
        masks[k, y0:y1, x0:x1] = True
    return Detections(masks, np.array([r[2:] for r in rows], np.float32).reshape(-1, 4),
                      np.array([r[1] for r in rows], np.float32),
                      np.array([r[0] for r in rows], np.int64))  # fmt: skip


def test_overlapping_loop_candidates_become_one_loop_with_their_summed_score():
    rows = [
        (1, 0.20, 10, 10, 20, 20),  # a faint loop the network fired on three times
        (1, 0.15, 11, 10, 21, 20),
        (1, 0.12, 10, 11, 20, 21),
        (1, 0.03, 10, 10, 20, 21),  # under the floor: grouped, adds nothing
        (1, 0.60, 40, 10, 50, 20),  # a clear loop, alone
        (1, 0.55, 41, 11, 51, 21),  # its duplicate
        (0, 0.70, 0, 30, 60, 34),  # two lines of a pile-up, boxes overlapping: untouched
        (0, 0.65, 0, 31, 60, 35),
        (1, 0.30, 20, 12, 30, 22),  # touches the first loop (IoU < 0.5): a loop of its own
    ]
    out = vote_loops(_det(rows), conf=0.25)
    loops = out.classes == 1
    assert np.allclose(sorted(out.scores[loops]), [0.3, 0.47, 1.0])  # 0.6 + 0.55 capped at 1
    assert (out.classes == 0).sum() == 2  # both lines kept, scores unchanged
    assert np.allclose(sorted(out.scores[~loops]), [0.65, 0.7])
    faint = np.flatnonzero(loops)[np.isclose(out.scores[loops], 0.47)][0]
    assert out.boxes[faint].tolist() == [10, 10, 20, 20]  # the best member's box and mask
    assert (out.masks[faint] == _det(rows[:1]).masks[0]).all()
    assert list(out.scores) == sorted(out.scores, reverse=True)
    # the threshold applies to the voted score: the faint loop alone would be dropped
    assert (vote_loops(_det(rows[:1]), conf=0.25).classes == 1).sum() == 0
    assert (vote_loops(_det(rows), conf=0.5).classes == 1).sum() == 1
    # the floor: a sum does not depend on how many candidates under it an engine passes
    assert np.allclose(vote_loops(_det(rows[:3]), 0.0).scores,
                       vote_loops(_det(rows[:4]), 0.0).scores)  # fmt: skip
    empty = vote_loops(_det([]), conf=0.25)
    assert empty.masks.shape == (0, H, W)


class _Candidates(Engine):
    """Returns fixed candidates, honouring its score floor as a network runtime does."""

    name = "candidates"

    def __init__(self, rows, **kw):
        super().__init__(None, **kw)
        self.rows, self.floors = rows, []

    def load(self) -> None:
        self.loaded = True

    def forward(self, frames):
        self.floors.append(self.conf)
        rows = [r for r in self.rows if r[1] >= self.conf]
        return [_det(rows, f.shape) for f in frames]


def test_the_engine_runs_at_the_vote_floor_and_thresholds_the_votes():
    rows = [(1, 0.20, 10, 10, 20, 20), (1, 0.15, 11, 10, 21, 20), (0, 0.1, 0, 30, 60, 34)]
    frame = np.zeros((H, W), np.uint8)
    plain = _Candidates(rows, conf=0.25)
    assert len(plain([frame])[0].scores) == 0  # each candidate under 0.25
    eng = _Candidates(rows, conf=0.25, loop_vote=True)
    d = eng([frame, frame])
    assert eng.floors == [VOTE_FLOOR] and eng.conf == 0.25  # restored after the call
    assert [x.classes.tolist() for x in d] == [[1], [1]]  # the line (0.1) dropped
    assert np.allclose([x.scores[0] for x in d], 0.35)
    low = _Candidates(rows, conf=0.001, loop_vote=True)  # eval's mAP floor: lower stays lower
    assert low([frame])[0].classes.tolist() == [1, 0]
    assert low.floors == [0.001]


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_loop_vote_is_checked(bad):
    with pytest.raises(ValueError, match="loop_vote must be true or false"):
        _Candidates([], loop_vote=bad)


def test_the_shipped_model_votes_and_every_command_can_turn_it_off():
    from loopline.cli import build_parser
    from loopline.daemon.config import ConfigError, load_config
    from loopline.daemon.stages.engine import make_engine
    from loopline.evaluation.evaluate import make_engine as eval_engine

    assert create_engine("defects").loop_vote is True  # the shipped operating point
    assert create_engine("defects", loop_vote=False).loop_vote is False
    assert create_engine("ridge").loop_vote is False
    assert eval_engine("defects", loop_vote=False).loop_vote is False
    assert load_config().engine.loop_vote == -1  # the model's own
    with pytest.raises(ConfigError, match=r"engine.loop_vote must be one of -1, 0, 1; got 2"):
        load_config(overrides={"engine.loop_vote": 2})
    cfg = load_config(overrides={"engine.model": "ridge", "engine.loop_vote": 1})
    assert make_engine(cfg).loop_vote is True
    p = build_parser()
    assert p.parse_args(["eval", "--data", "d", "--no-loop-vote"]).loop_vote is False
    assert p.parse_args(["analyze", "v.mp4", "--out", "o"]).loop_vote is None


@pytest.mark.skipif(not SHIPPED_ONNX.exists(), reason="no shipped defects.onnx")
def test_the_shipped_model_finds_each_loop_once_with_votes(tmp_path):
    pytest.importorskip("onnxruntime")
    from loopline.engines import ops
    from loopline.evaluation.data import Dataset
    from loopline.synth.generate import generate

    root = tmp_path / "loops"
    generate(root, preset="loops", count=1, seed=5, jobs=1, progress=False,
             overrides={"width": 256, "height": 256, "loops": (12, 12),
                        "loop_contrast": (0.4, 0.5), "camera_noise": (0.02, 0.03)})  # fmt: skip
    fr = Dataset(root).frame(0)
    voted = create_engine("defects", engine="onnx")([fr.image])[0]
    plain = create_engine("defects", engine="onnx", loop_vote=False)([fr.image])[0]
    v = voted.boxes[voted.classes == 1]
    assert len(v) >= 8
    iou = ops.box_iou(v, v)
    np.fill_diagonal(iou, 0.0)
    assert iou.max() <= 0.5  # no two voted loops are one loop's candidates
    truth = fr.boxes[fr.classes == 1].astype(np.float32)
    found = (ops.box_iou(truth, v).max(axis=1) > 0.5).sum()
    found_plain = (ops.box_iou(truth, plain.boxes[plain.classes == 1]).max(axis=1) > 0.5).sum()
    assert found >= found_plain  # merging candidates loses no loop the plain engine finds
    assert voted.scores.max() <= 1.0


def test_the_yolo_postprocess_votes_before_decoding_masks():
    """Raw head output: a faint loop with two candidates (0.20, 0.15: box IoU 0.6, which NMS
    at 0.7 keeps), a clear loop, a line; the vote gives the faint loop 0.35."""
    from loopline.engines import ops

    nm, a = 4, 6
    pred = np.zeros((1, 4 + 2 + nm, a), np.float32)
    # cx, cy, w, h (network px), class scores, mask coefficients
    rows = [(30, 30, 20, 20, 0.0, 0.20), (35, 30, 20, 20, 0.0, 0.15),  # IoU 0.6
            (90, 90, 16, 16, 0.0, 0.80), (64, 110, 100, 6, 0.6, 0.0),
            (10, 110, 8, 8, 0.0, 0.04), (12, 110, 8, 8, 0.0, 0.03)]  # fmt: skip
    for j, r in enumerate(rows):
        pred[0, :6, j] = r
        pred[0, 6, j] = 10.0  # a positive mask everywhere (prototype 0 is all ones)
    protos = np.zeros((1, nm, 32, 32), np.float32)
    protos[0, 0] = 1.0
    lb = ops.letterbox_params((128, 128), 128)
    kw = {"conf": 0.25, "iou": 0.7, "max_det": 300}
    ((m, b, s, c),) = ops.postprocess(pred, protos, [lb], **kw)
    assert np.allclose(sorted(s), [0.6, 0.8])  # the faint loop is missed
    ((m, b, s, c),) = ops.postprocess(pred, protos, [lb], loop_vote=True, **kw)
    assert np.allclose(s, [0.8, 0.6, 0.35]) and c.tolist() == [1, 0, 1]
    assert np.allclose(b[2], [20, 20, 40, 40])  # the best candidate's box
    assert m.shape == (3, 128, 128) and m.any(axis=(1, 2)).all()
    ((m, b, s, c),) = ops.postprocess(pred, protos, [lb], loop_vote=True,
                                      **{**kw, "conf": 0.001})  # fmt: skip
    assert len(s) == 4  # eval's floor: the 0.04/0.03 pair is one loop, not summed (< 0.05)
    assert np.isclose(s[-1], 0.04)
