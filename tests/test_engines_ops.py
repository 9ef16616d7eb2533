"""Shared pre/post-processing (``loopline.engines.ops``) against ultralytics and each other."""

from __future__ import annotations

import numpy as np
import pytest

from loopline.engines import ops
from loopline.engines.base import Detections

IMPLS = ["python", "numba"]


def _smooth_protos(rng, nm=32, size=32):
    """Prototypes with blob-like structure, like a real network's."""
    import cv2

    p = rng.normal(size=(nm, size, size)).astype(np.float32)
    return np.stack([cv2.GaussianBlur(x, (0, 0), 2.0) * 4 for x in p])


def _random_pred(rng, *, n_anchors=400, nc=2, nm=32, imgsz=128):
    xy = rng.uniform(10, imgsz - 10, size=(2, n_anchors))
    wh = rng.uniform(4, 60, size=(2, n_anchors))
    cls = rng.uniform(0, 1, size=(nc, n_anchors)) ** 4
    coef = rng.normal(size=(nm, n_anchors))
    return np.concatenate([xy, wh, cls, coef])[None].astype(np.float32)


# ------------------------------------------------------------------------ pre-processing


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (100, 60)])
def test_preprocess_matches_ultralytics_letterbox(shape):
    lb_mod = pytest.importorskip("ultralytics.data.augment")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=shape, dtype=np.uint8)
    batch, lbs = ops.preprocess([frame], 64)
    ref = lb_mod.LetterBox((64, 64), auto=False)(image=np.repeat(frame[:, :, None], 3, axis=2))
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0].transpose(1, 2, 0), ref / 255.0, atol=1e-6)
    assert lbs[0].shape == shape


def test_preprocess_uint16_and_validation():
    f16 = np.full((32, 32), 65535, np.uint16)
    batch, _ = ops.preprocess([f16, np.zeros((32, 32), np.uint8)], 32)
    assert batch.shape == (2, 3, 32, 32)
    assert batch[0].min() == 1.0 and batch[1].max() == 0.0
    with pytest.raises(ValueError, match="grey"):
        ops.preprocess([np.zeros((8, 8, 3), np.uint8)], 32)
    with pytest.raises(ValueError, match="empty"):
        ops.preprocess([], 32)


def test_scale_boxes_roundtrip():
    lb = ops.letterbox_params((100, 200), 64)
    frame_boxes = np.array([[10, 20, 150, 90]], np.float32)
    net = frame_boxes * lb.gain + np.array([lb.left, lb.top, lb.left, lb.top])
    np.testing.assert_allclose(ops.scale_boxes(net.astype(np.float32), lb), frame_boxes,
                               atol=1e-4)  # fmt: skip


# ------------------------------------------------------------------------ NMS


@pytest.mark.parametrize("impl", IMPLS)
def test_nms_matches_torchvision(impl):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, size=(300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, size=(300, 2))], 1).astype(np.float32)
    scores = rng.uniform(size=300).astype(np.float32)
    for thr in (0.3, 0.7):
        ref = tv.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(ops.nms(boxes, scores, thr, impl=impl), ref)


def test_nms_validates_and_handles_empty():
    assert ops.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\), got \(3, 5\)"):
        ops.nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="impl"):
        ops.nms(np.zeros((1, 4)), np.zeros(1), 0.5, impl="cuda")


@pytest.mark.parametrize("impl", IMPLS)
def test_non_max_suppression_matches_ultralytics(impl):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(2)
    pred = np.concatenate([_random_pred(rng), _random_pred(rng)])
    ref = non_max_suppression(torch.from_numpy(pred), 0.25, 0.7, nc=2, max_det=50)
    got = ops.non_max_suppression(pred, nc=2, conf=0.25, iou=0.7, max_det=50, impl=impl)
    for r, g in zip(ref, got, strict=True):
        assert len(r) > 5
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------ masks


@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
def test_decode_masks_numba_equals_python(shape):
    rng = np.random.default_rng(3)
    protos = _smooth_protos(rng)
    lb = ops.letterbox_params(shape, 128)
    coeffs = rng.normal(size=(12, 32)).astype(np.float32)
    xy = rng.uniform(0, 0.7, size=(12, 2)) * shape[::-1]
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, size=(12, 2))], 1).astype(np.float32)
    a = ops.decode_masks(protos, coeffs, boxes, lb, impl="python")
    b = ops.decode_masks(protos, coeffs, boxes, lb, impl="numba")
    assert a.shape == (12, *shape) and a.dtype == bool
    assert (a != b).sum() <= 2  # float rounding at exact zero crossings only
    # nothing outside the boxes
    yy, xx = np.indices(shape)
    for m, (x0, y0, x1, y1) in zip(b, boxes, strict=True):
        assert not m[(xx < x0) | (xx >= x1) | (yy < y0) | (yy >= y1)].any()


@pytest.mark.parametrize("shape", [(128, 128), (256, 256), (96, 160)])
def test_decode_masks_matches_ultralytics_native(shape):
    torch = pytest.importorskip("torch")
    from ultralytics.utils import ops as uops

    rng = np.random.default_rng(4)
    protos = _smooth_protos(rng)
    lb = ops.letterbox_params(shape, 128)
    coeffs = rng.normal(size=(10, 32)).astype(np.float32)
    xy = rng.uniform(0, 0.6, size=(10, 2)) * shape[::-1]
    boxes = np.concatenate([xy, xy + rng.uniform(20, 80, size=(10, 2))], 1).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, shape[0])
    ref = uops.process_mask_native(torch.from_numpy(protos), torch.from_numpy(coeffs),
                                   torch.from_numpy(boxes), shape).numpy().astype(bool)  # fmt: skip
    got = ops.decode_masks(protos, coeffs, boxes, lb)
    iou = np.diag(ops.mask_iou(got, ref))
    nonempty = ref.any(axis=(1, 2))
    assert iou[nonempty].mean() >= 0.98, iou


@pytest.mark.parametrize("impl", ["python", "numba"])
def test_decode_masks_threshold_is_a_probability_cut(impl):
    rng = np.random.default_rng(6)
    protos = _smooth_protos(rng)
    lb = ops.letterbox_params((128, 128), 128)
    coeffs = rng.normal(size=(6, 32)).astype(np.float32)
    boxes = np.tile(np.array([[0, 0, 128, 128]], np.float32), (6, 1))
    m = {t: ops.decode_masks(protos, coeffs, boxes, lb, impl=impl, mask_threshold=t)
         for t in (0.2, 0.5, 0.8)}  # fmt: skip
    assert (m[0.5] == ops.decode_masks(protos, coeffs, boxes, lb, impl=impl)).all()
    # nested: a lower cut keeps every pixel of a higher one, and more
    assert not (m[0.5] & ~m[0.2]).any() and not (m[0.8] & ~m[0.5]).any()
    assert m[0.2].sum() > m[0.5].sum() > m[0.8].sum()
    # on the prototype grid itself (gain 1, stride 1) the cut is exactly sigmoid(logit) > t
    logits = np.tensordot(coeffs, protos, axes=1)
    lb1 = ops.letterbox_params((32, 32), 32)
    small = ops.decode_masks(protos, coeffs, boxes / 4, lb1, impl=impl, mask_threshold=0.2)
    ref = 1 / (1 + np.exp(-logits)) > 0.2
    assert (small != ref).sum() <= 2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"mask_threshold must lie in \(0, 1\)"):
            ops.decode_masks(protos, coeffs, boxes, lb, impl=impl, mask_threshold=bad)


def test_postprocess_mask_threshold_per_class():
    rng = np.random.default_rng(7)
    pred = _random_pred(rng)
    protos = _smooth_protos(rng)[None]
    lb = ops.letterbox_params((128, 128), 128)
    kw = {"conf": 0.25, "iou": 0.7, "max_det": 300}
    per = ops.postprocess(pred, protos, [lb], mask_threshold=(0.2, 0.8), **kw)[0]
    for t, cls in ((0.2, 0), (0.8, 1)):
        one = ops.postprocess(pred, protos, [lb], mask_threshold=t, **kw)[0]
        a, b = per[3] == cls, one[3] == cls
        assert a.sum() == b.sum() > 0
        np.testing.assert_array_equal(per[0][a], one[0][b])
    with pytest.raises(ValueError, match=r"one value or one per class \(2\)"):
        ops.postprocess(pred, protos, [lb], mask_threshold=(0.2, 0.5, 0.8), **kw)


def test_postprocess_drops_empty_masks_and_builds_detections():
    rng = np.random.default_rng(5)
    pred = _random_pred(rng)
    protos = _smooth_protos(rng)[None]
    lb = ops.letterbox_params((128, 128), 128)
    ((m, b, s, c),) = ops.postprocess(pred, protos, [lb], conf=0.25, iou=0.7, max_det=300)
    d = Detections(m, b, s, c)
    assert len(d) > 0 and d.masks.any(axis=(1, 2)).all()
    assert np.all(np.diff(d.scores) <= 0)


def test_match_instances():
    a = np.zeros((2, 8, 8), bool)
    a[0, :4] = True
    a[1, 4:] = True
    pairs = ops.match_instances(a, a[::-1])
    assert sorted(map(tuple, pairs[:, :2].astype(int))) == [(0, 1), (1, 0)]
    assert ops.match_instances(a, a[:0]).shape == (0, 3)
