"""Pre- and post-processing shared by every YOLOv8-seg runtime, in NumPy (no torch).

The runtimes differ only in how they run the network; everything around it lives here so that
they give the same result for the same frames and so that the CPU runtimes need no torch:

``preprocess``
    grey (H, W) uint8/uint16 frames -> letterboxed (B, 3, S, S) float32 in [0, 1], exactly as
    ultralytics' ``LetterBox(auto=False)`` (bilinear resize, grey 114 padding, centred).
``non_max_suppression``
    raw head output (B, 4 + nc + nm, A) -> per-frame candidates, class-aware greedy NMS with the
    semantics of ``torchvision.ops.nms`` (a box is dropped when its IoU with a kept box of the
    same class is > ``iou``).
``decode_masks``
    mask coefficients + prototypes -> (N, H, W) bool masks at *frame* resolution, **crop first**:
    each box's logits are computed only on the window of prototype cells its pixels sample
    (32 multiply-adds per cell), and only the frame pixels inside the box are interpolated
    (bilinear, half-pixel centres, as ``F.interpolate(align_corners=False)``) and thresholded.
    Ultralytics' ``process_mask_native`` instead computes every mask over the whole prototype
    grid and upsamples it to the whole frame before cropping; on 2 cores that costs ~1.5 ms per
    detection at 512 px (``benchmarks/engines.py --post-only`` shows the comparison).

Every compiled kernel (``_nms_nb``, ``_decode_nb``) has a pure-Python twin (``impl="python"``)
that the tests run against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from numba import jit  # a core dependency: the Python twins are for checking it

from ..models import mask_thresholds

logger = logging.getLogger(__name__)

__all__ = [
    "PAD_VALUE",
    "Letterbox",
    "box_iou",
    "decode_masks",
    "letterbox_params",
    "mask_iou",
    "match_instances",
    "nms",
    "non_max_suppression",
    "postprocess",
    "preprocess",
    "scale_boxes",
    "to_uint8",
]

PAD_VALUE = 114  # ultralytics' letterbox grey
_MAX_WH = 7680.0  # class offset for class-aware NMS (as ultralytics)
_MAX_NMS = 30000  # candidates kept before NMS (as ultralytics)


# --------------------------------------------------------------------------- pre-processing


@dataclass(frozen=True)
class Letterbox:
    """How one frame was placed into the square network input.

    ``x_net = x_frame * gain + left`` (px), same for y with ``top``.
    """

    shape: tuple[int, int]  # frame (H, W)
    imgsz: int
    gain: float
    left: int
    top: int
    new_w: int
    new_h: int


def letterbox_params(shape: tuple[int, int], imgsz: int) -> Letterbox:
    """Letterbox of a frame of ``shape`` (H, W) into ``imgsz`` square (ultralytics' rounding)."""
    h, w = int(shape[0]), int(shape[1])
    gain = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * gain), 1), max(round(h * gain), 1)
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    return Letterbox((h, w), imgsz, gain, round(dw - 0.1), round(dh - 0.1), new_w, new_h)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """An (H, W) grey frame as uint8.

    uint8 is returned as is; uint16 is scaled by 1/257 (full 16-bit range to 0..255): a camera
    that uses fewer bits should be contrast-stretched upstream. Floats are taken as [0, 1];
    a pixel that is not a number (NaN: a dead or masked pixel of a float image) becomes 0.
    """
    if frame.ndim != 2:
        raise ValueError(f"frame must be a (H, W) grey array, got shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16:
        return (frame.astype(np.float32) * (1.0 / 257.0) + 0.5).astype(np.uint8)
    if np.issubdtype(frame.dtype, np.floating):
        # NaN survives clip and has no uint8 value (numpy warns "invalid value in cast")
        f = np.clip(np.nan_to_num(frame, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return (f * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"frame must be uint8, uint16 or float, got {frame.dtype}")


def _letterbox_u8(frame: np.ndarray, lb: Letterbox) -> np.ndarray:
    img = to_uint8(frame)
    if img.shape != (lb.new_h, lb.new_w):
        img = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=cv2.INTER_LINEAR)
    right = lb.imgsz - lb.new_w - lb.left
    bottom = lb.imgsz - lb.new_h - lb.top
    if lb.left or lb.top or right or bottom:
        img = cv2.copyMakeBorder(
            img, lb.top, bottom, lb.left, right, cv2.BORDER_CONSTANT, value=PAD_VALUE
        )
    return img


def preprocess(
    frames: list[np.ndarray], imgsz: int, *, dtype: type = np.float32
) -> tuple[np.ndarray, list[Letterbox]]:
    """Letterbox, grey -> 3 channels, scale to [0, 1] and batch.

    Parameters
    ----------
    frames : list of (H, W) uint8 or uint16
        Grey frames; they may differ in shape.
    imgsz : int
        Network input size (px).

    Returns
    -------
    batch : (B, 3, imgsz, imgsz) ``dtype``
        C-contiguous network input.
    boxes : list of Letterbox
        One per frame, to map results back to frame pixels.

    >>> batch, lbs = preprocess([np.zeros((64, 128), np.uint8)], 64)
    >>> batch.shape, lbs[0].top, round(float(batch[0, 0, 0, 0]), 4)
    ((1, 3, 64, 64), 16, 0.4471)
    """
    if not frames:
        raise ValueError("frames must not be empty")
    lbs = [letterbox_params(f.shape[:2], imgsz) for f in frames]
    grey = np.stack([_letterbox_u8(f, lb) for f, lb in zip(frames, lbs, strict=True)])
    out = np.empty((len(frames), 3, imgsz, imgsz), dtype)
    # normalise once on the grey plane, then copy it into the three channels
    np.multiply(grey[:, None], np.asarray(1.0 / 255.0, dtype), out=out[:, :1], casting="unsafe")
    out[:, 1] = out[:, 0]
    out[:, 2] = out[:, 0]
    return out, lbs


# --------------------------------------------------------------------------- NMS


def box_iou(a: np.ndarray, b: np.ndarray, *, dtype: type = np.float32) -> np.ndarray:
    """IoU matrix (N, M) of xyxy boxes a (N, 4) and b (M, 4), computed in ``dtype`` (float32
    for NMS, as ultralytics; :func:`loopline.evaluation.metrics.box_iou` asks float64); 0
    where both boxes are empty. The one box IoU of loopline."""
    a = np.asarray(a, dtype).reshape(-1, 4)
    b = np.asarray(b, dtype).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _nms_py(boxes: np.ndarray, order: np.ndarray, iou: float) -> np.ndarray:
    iou_m = box_iou(boxes, boxes)
    removed = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou_m[i] > iou
    return np.asarray(keep, np.int64)


@jit(nopython=True, cache=True, nogil=True)
def _nms_nb(boxes, order, iou):  # pragma: no cover - compiled
    n = boxes.shape[0]
    removed = np.zeros(n, np.bool_)
    keep = np.empty(n, np.int64)
    k = 0
    for ii in range(n):
        i = order[ii]
        if removed[i]:
            continue
        keep[k] = i
        k += 1
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area_i = (x1 - x0) * (y1 - y0)
        for jj in range(ii + 1, n):
            j = order[jj]
            if removed[j]:
                continue
            w = min(x1, boxes[j, 2]) - max(x0, boxes[j, 0])
            h = min(y1, boxes[j, 3]) - max(y0, boxes[j, 1])
            if w <= 0 or h <= 0:
                continue
            inter = w * h
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / max(area_i + area_j - inter, 1e-9) > iou:
                removed[j] = True
    return keep[:k]


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou: float, *, impl: str | None = None
) -> np.ndarray:
    """Greedy NMS; indices of kept boxes by decreasing score.

    Parameters
    ----------
    boxes : (N, 4) float32
        xyxy px.
    scores : (N,) float32
    iou : float
        A box is dropped when its IoU with a kept box is greater than this.
    impl : {"numba", "python"}, optional

    >>> nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32),
    ...     np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
    [0, 2]
    """
    boxes = np.ascontiguousarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if scores.shape != (len(boxes),):
        raise ValueError(f"scores must have shape ({len(boxes)},), got {scores.shape}")
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    impl = impl or "numba"
    if impl == "numba":
        return _nms_nb(boxes, order.astype(np.int64), float(iou))
    if impl == "python":
        return _nms_py(boxes, order, iou)
    raise ValueError(f"impl must be 'numba' or 'python', got {impl!r}")


def non_max_suppression(
    pred: np.ndarray,
    *,
    nc: int,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    impl: str | None = None,
) -> list[np.ndarray]:
    """Candidates of a YOLOv8 head, per frame.

    Parameters
    ----------
    pred : (B, 4 + nc + nm, A) float
        Raw head output: ``cx, cy, w, h`` (px in the network input), ``nc`` class scores and
        ``nm`` mask coefficients per anchor.
    nc : int
        Number of classes.

    Returns
    -------
    list of (K, 6 + nm) float32
        ``x0, y0, x1, y1, score, class, coefficients...`` by decreasing score, K <= max_det.
    """
    if pred.ndim != 3 or pred.shape[1] < 4 + nc:
        raise ValueError(f"pred must have shape (B, 4 + {nc} + nm, A), got {pred.shape}")
    out = []
    for p in pred:  # one frame at a time: a loop over frames, not over objects
        cls = p[4 : 4 + nc]
        score = cls.max(axis=0)
        idx = np.flatnonzero(score > conf)
        if idx.size == 0:
            out.append(np.zeros((0, 6 + p.shape[0] - 4 - nc), np.float32))
            continue
        x = np.ascontiguousarray(p[:, idx].T, dtype=np.float32)  # (K, 4 + nc + nm)
        s = score[idx].astype(np.float32)
        if len(s) > _MAX_NMS:
            top = np.argsort(-s, kind="stable")[:_MAX_NMS]
            x, s = x[top], s[top]
        c = x[:, 4 : 4 + nc].argmax(axis=1).astype(np.float32)
        xy, wh = x[:, :2], x[:, 2:4] * 0.5
        boxes = np.concatenate([xy - wh, xy + wh], axis=1)
        offset = 0.0 if agnostic else _MAX_WH
        keep = nms(boxes + (c * offset)[:, None], s, iou, impl=impl)[:max_det]
        out.append(
            np.concatenate(
                [boxes[keep], s[keep, None], c[keep, None], x[keep, 4 + nc :]], axis=1
            ).astype(np.float32, copy=False)
        )
    return out


def scale_boxes(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Network-input xyxy boxes (N, 4) -> frame px, clipped to the frame."""
    b = (boxes - np.array([lb.left, lb.top, lb.left, lb.top], np.float32)) / np.float32(lb.gain)
    h, w = lb.shape
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- masks


def _sample_axis(n_frame: int, gain: float, offset: int, stride: float, n_proto: int):
    """Bilinear taps along one axis: frame pixel i -> proto index i0, i1 and weight w1.

    Frame pixel centre ``i + 0.5`` sits at ``(i + 0.5) * gain + offset`` in the network input
    and at ``that / stride - 0.5`` in prototype pixels (half-pixel centres, clamped at the
    edges as ``F.interpolate(align_corners=False)`` does).
    """
    src = ((np.arange(n_frame, dtype=np.float64) + 0.5) * gain + offset) / stride - 0.5
    src = np.clip(src, 0.0, n_proto - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_proto - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _box_ranges(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel ranges [c0, c1) x [r0, r1) inside each box (pixel index >= x0 and < x1)."""
    h, w = shape
    r = np.ceil(boxes).astype(np.int64)
    r[:, 0::2] = r[:, 0::2].clip(0, w)
    r[:, 1::2] = r[:, 1::2].clip(0, h)
    return r


def _proto_window(rng, ry0, ry1, cx0, cx1):
    """Prototype rows/cols [py0, py1] x [px0, px1] (inclusive) that a box's pixels sample."""
    c0, r0, c1, r1 = rng
    return ry0[r0], ry1[r1 - 1], cx0[c0], cx1[c1 - 1]


def _decode_py(protos, coeffs, ranges, ry0, ry1, wy, cx0, cx1, wx, thr, out, hit):
    for n in range(len(coeffs)):
        c0, r0, c1, r1 = ranges[n]
        if c1 <= c0 or r1 <= r0:
            continue
        py0, py1, px0, px1 = _proto_window(ranges[n], ry0, ry1, cx0, cx1)
        lg = np.tensordot(coeffs[n], protos[:, py0 : py1 + 1, px0 : px1 + 1], axes=1)
        w_y = wy[r0:r1, None]
        rows = lg[ry0[r0:r1] - py0] * (1 - w_y) + lg[ry1[r0:r1] - py0] * w_y  # (rows, cols)
        w_x = wx[c0:c1]
        v = rows[:, cx0[c0:c1] - px0] * (1 - w_x) + rows[:, cx1[c0:c1] - px0] * w_x
        out[n, r0:r1, c0:c1] = v > thr[n]
        hit[n] = out[n, r0:r1, c0:c1].any()


@jit(nopython=True, cache=True, nogil=True)
def _decode_nb(protos, coeffs, ranges, ry0, ry1, wy, cx0, cx1, wx, thr, out, hit):  # pragma: no cover  # noqa: E501
    # serial on purpose: per box the work is small, and worker threads that wait on a busy
    # core (the daemon shares its CPU) cost more than they save
    nm = protos.shape[0]
    for n in range(coeffs.shape[0]):
        c0, r0, c1, r1 = ranges[n, 0], ranges[n, 1], ranges[n, 2], ranges[n, 3]
        if c1 <= c0 or r1 <= r0:
            continue
        py0, py1, px0, px1 = ry0[r0], ry1[r1 - 1], cx0[c0], cx1[c1 - 1]
        lg = np.zeros((py1 - py0 + 1, px1 - px0 + 1), np.float32)
        for k in range(nm):  # logits of this box's prototype window only
            c = coeffs[n, k]
            for py in range(py0, py1 + 1):
                for px in range(px0, px1 + 1):
                    lg[py - py0, px - px0] += c * protos[k, py, px]
        for y in range(r0, r1):
            a = lg[ry0[y] - py0]
            b = lg[ry1[y] - py0]
            t = wy[y]
            for x in range(c0, c1):
                i0 = cx0[x] - px0
                i1 = cx1[x] - px0
                u = wx[x]
                v0 = a[i0] * (1 - t) + b[i0] * t
                v1 = a[i1] * (1 - t) + b[i1] * t
                if v0 * (1 - u) + v1 * u > thr[n]:
                    out[n, y, x] = True
                    hit[n] = True


def decode_masks(
    protos: np.ndarray,
    coeffs: np.ndarray,
    boxes: np.ndarray,
    lb: Letterbox,
    *,
    impl: str | None = None,
    return_nonempty: bool = False,
    mask_threshold: float | np.ndarray = 0.5,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Instance masks at frame resolution, computed only inside each box.

    Parameters
    ----------
    protos : (nm, mh, mw) float
        Mask prototypes of one frame (1/4 of the network input, 1/2 for the P2 head; the stride is
        taken from their shape).
    coeffs : (N, nm) float
        Mask coefficients of the kept detections.
    boxes : (N, 4) float32
        Boxes in *frame* px (``scale_boxes``); pixels outside are False.
    lb : Letterbox
        The frame's letterbox.
    impl : {"numba", "python"}, optional

    return_nonempty : bool
        Also return which masks have any pixel set (free: found while decoding).
    mask_threshold : float or (N,) array
        A pixel belongs to the mask when its interpolated mask probability exceeds this, in
        (0, 1), for every box or per box; 0.5 (logit 0) is ultralytics' rule.

    Returns
    -------
    masks : (N, H, W) bool
    nonempty : (N,) bool, only if ``return_nonempty``
    """
    nm, mh, mw = protos.shape
    n = len(coeffs)
    h, w = lb.shape
    out = np.zeros((n, h, w), bool)
    hit = np.zeros(n, bool)
    if n == 0:
        return (out, hit) if return_nonempty else out
    if coeffs.shape != (n, nm):
        raise ValueError(f"coeffs must have shape ({n}, {nm}), got {coeffs.shape}")
    thr = np.broadcast_to(mask_thresholds(mask_threshold, n, per="box"), (n,))
    thr = np.log(thr / (1.0 - thr)).astype(np.float32)  # as logits, one per box
    protos = np.ascontiguousarray(protos, np.float32)
    coeffs = np.ascontiguousarray(coeffs, np.float32)
    ry0, ry1, wy = _sample_axis(h, lb.gain, lb.top, lb.imgsz / mh, mh)
    cx0, cx1, wx = _sample_axis(w, lb.gain, lb.left, lb.imgsz / mw, mw)
    ranges = _box_ranges(boxes, (h, w))
    impl = impl or "numba"
    if impl == "numba":
        _decode_nb(protos, coeffs, ranges, ry0, ry1, wy, cx0, cx1, wx, thr, out, hit)
    elif impl == "python":
        _decode_py(protos, coeffs, ranges, ry0, ry1, wy, cx0, cx1, wx, thr, out, hit)
    else:
        raise ValueError(f"impl must be 'numba' or 'python', got {impl!r}")
    return (out, hit) if return_nonempty else out


def warmup() -> None:
    """Compile the Numba kernels (NMS, mask decoding) now, on tiny inputs: a first frame with
    detections would otherwise pay for it (a frame without any never calls them)."""
    boxes = np.array([[2, 2, 20, 20], [3, 3, 20, 20]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8], np.float32), 0.5)
    protos = np.zeros((4, 16, 16), np.float32)
    decode_masks(protos, np.ones((len(keep), 4), np.float32), boxes[keep],
                 letterbox_params((64, 64), 64))  # fmt: skip


def postprocess(
    pred: np.ndarray,
    protos: np.ndarray,
    lbs: list[Letterbox],
    *,
    conf: float,
    iou: float,
    max_det: int,
    impl: str | None = None,
    mask_threshold: float | tuple[float, ...] = 0.5,
    loop_vote: bool = False,
):
    """Raw outputs of a batch -> per frame ``(masks, boxes, scores, classes)``.

    Parameters
    ----------
    pred : (B, 4 + nc + nm, A) float
    protos : (B, nm, mh, mw) float
    lbs : list of Letterbox, length B

    mask_threshold : float or tuple of float
        Mask probability cut (``decode_masks``), for every class or one per class.
    loop_vote : bool
        Vote on the loop candidates' boxes (``loopline.engines.votes``): NMS at the votes'
        score floor, then ``conf`` on the voted scores, before any mask is decoded.

    Instances whose mask is empty are dropped, as ultralytics does.
    """
    nm = protos.shape[1]
    nc = pred.shape[1] - 4 - nm
    if nc < 1:
        raise ValueError(f"pred has {pred.shape[1]} channels: too few for 4 + nc + {nm}")
    per_class = mask_thresholds(mask_threshold, nc)
    floor = conf
    if loop_vote:
        from .votes import VOTE_FLOOR, vote_boxes

        floor = min(conf, VOTE_FLOOR)
    dets = non_max_suppression(pred, nc=nc, conf=floor, iou=iou, max_det=max_det, impl=impl)
    results = []
    for d, p, lb in zip(dets, protos, lbs, strict=True):
        if loop_vote:
            keep, voted = vote_boxes(d[:, :4], d[:, 4], d[:, 5].astype(np.int64), conf)
            d = d[keep]
            d[:, 4] = voted
        boxes = scale_boxes(d[:, :4], lb)
        thr = per_class[d[:, 5].astype(np.int64)] if len(per_class) > 1 else per_class[0]
        masks, keep = decode_masks(p, d[:, 6:], boxes, lb, impl=impl, return_nonempty=True,
                                   mask_threshold=thr)  # fmt: skip
        if not keep.all():
            masks, boxes, d = masks[keep], boxes[keep], d[keep]
        results.append((masks, boxes, d[:, 4].copy(), d[:, 5].astype(np.int64)))
    return results


# --------------------------------------------------------------------------- comparison


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) float64 of bool masks a (N, H, W) and b (M, H, W); 0 where both are
    empty. Sparse products: lines are thin, so this is far lighter than (N, H*W) dense floats.
    The one mask IoU of loopline (the evaluation's checks its inputs, then calls this)."""
    from scipy import sparse

    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return np.zeros((n, m))

    def csr(x: np.ndarray):
        flat = np.asarray(x, bool).reshape(len(x), -1)
        rows, cols = np.nonzero(flat)
        return sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)),
                                 shape=flat.shape)  # fmt: skip

    sa, sb = csr(a), csr(b)
    inter = (sa @ sb.T).toarray().astype(np.float64)
    area_a = np.asarray(sa.sum(axis=1)).ravel()
    area_b = np.asarray(sb.sum(axis=1)).ravel()
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_instances(a: np.ndarray, b: np.ndarray, *, min_iou: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of masks by IoU; (K, 3) rows ``i, j, iou`` with iou >= min_iou.

    Used to compare engines (parity, INT8 loss), not on the hot path.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 3))
    m = mask_iou(a, b)
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < min_iou:
            break
        pairs.append((i, j, float(m[i, j])))
        m[i, :] = -1
        m[:, j] = -1
    return np.asarray(pairs, float).reshape(-1, 3)
