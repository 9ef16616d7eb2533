"""Recover an ``annotated*.mp4`` that was never finalised (the recorder was killed).

OpenCV writes an MP4's index (the ``moov`` box) only when the video is released, so a
SIGKILL, an out-of-memory kill or a power cut leaves a file that no player opens, although
every encoded frame but the last few is on disk in its ``mdat`` box. The recorder writes a
sidecar ``<video>.open`` (frame size, rate, codec) when it opens a video and removes it once the
video is finalised; a sidecar still there marks a video to recover.

Recovery reads the MPEG-4 Part 2 stream out of ``mdat``, puts back the decoder configuration
that the lost index held (the encoder's header for the same size and rate, made by encoding
one blank frame), decodes every whole frame and writes a finalised MP4 in place of the broken
one. The frames in the writer's last unflushed buffer (up to 256 KiB: about 5-10 annotated
512x512 frames) are lost; the count of frames recovered is returned so that it can be set
against ``frames.csv``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from .._procs import process_alive, writer_record

logger = logging.getLogger(__name__)

__all__ = ["SIDECAR", "recover_run", "recover_video", "recover_videos", "sidecar", "write_sidecar"]

SIDECAR = ".open"  # suffix added to the video's name
_FOURCC = "mp4v"  # the only codec the recorder writes and the only stream this module parses


def sidecar(video: str | Path) -> Path:
    """The file that marks ``video`` as not finalised yet."""
    return Path(f"{video}{SIDECAR}")


def write_sidecar(video: Path, width: int, height: int, fps: float) -> Path:
    """Mark ``video`` as open (atomically): what recovery needs if it is never finalised."""
    side = sidecar(video)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({"width": width, "height": height, "fps": fps,
                               "fourcc": _FOURCC, **writer_record()}) + "\n")  # fmt: skip
    os.replace(tmp, side)
    return side


def _alive(meta: dict) -> bool:
    """Whether the video's writer (the sidecar's pid and start time) still runs; a killed
    writer not yet reaped (a zombie) does not."""
    return process_alive(meta.get("pid"), meta.get("start"))


def _boxes(f: BinaryIO) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 boxes: type -> (payload start, payload end); a box cut short ends at EOF."""
    size_all = f.seek(0, os.SEEK_END)
    out: dict[bytes, tuple[int, int]] = {}
    i = 0
    while i + 8 <= size_all:
        f.seek(i)
        head = f.read(16)
        size, typ = struct.unpack(">I4s", head[:8])
        n = 8
        if size == 1:  # 64-bit size
            if len(head) < 16:
                break
            size, n = struct.unpack(">Q", head[8:16])[0], 16
        if size and size < n:
            break  # not a box: garbage after the last one
        end = size_all if size == 0 or i + size > size_all else i + size
        out.setdefault(typ, (i + n, end))
        i = end
    return out


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """An MPEG-4 descriptor at ``pos``: (tag, length, payload start)."""
    tag, pos, n = data[pos], pos + 1, 0
    for _ in range(4):
        b = data[pos]
        pos += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            break
    return tag, n, pos


def _decoder_config(width: int, height: int, fps: float) -> bytes:
    """The encoder's MPEG-4 header (VOS/VO/VOL) for this size and rate, from a one-frame MP4."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "config.mp4"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*_FOURCC), fps, (width, height))
        if not w.isOpened():
            raise OSError(f"OpenCV cannot write {_FOURCC} video here: cannot recover")
        w.write(np.zeros((height, width, 3), np.uint8))
        w.release()
        data = p.read_bytes()
    i = data.find(b"esds")
    if i < 0:
        raise OSError(f"no esds box in a {_FOURCC} MP4 written by this OpenCV: cannot recover")
    tag, _, pos = _descriptor(data, i + 8)  # after the box type and version/flags
    flags = data[pos + 2]  # after the ES_ID
    pos += 3 + (2 if flags & 0x80 else 0)  # dependsOn_ES_ID
    pos += 1 + data[pos] if flags & 0x40 else 0  # URL
    pos += 2 if flags & 0x20 else 0  # OCR_ES_ID
    tag2, _, pos = _descriptor(data, pos)  # DecoderConfigDescriptor
    tag3, n, pos = _descriptor(data, pos + 13)  # DecoderSpecificInfo
    if (tag, tag2, tag3) != (3, 4, 5):
        raise OSError(f"unexpected esds layout {(tag, tag2, tag3)}: cannot recover")
    return data[pos:pos + n]


def recover_video(video: str | Path) -> int | None:
    """Rewrite an unfinalised MP4 as a playable one; returns the frames recovered.

    Returns None when there is nothing to do: the video was finalised after all (its stale
    sidecar is removed) or its sidecar is missing and the file is complete.

    Raises
    ------
    FileNotFoundError
        No such video.
    ValueError
        The video has no index and no sidecar (its size and rate are unknown), its writer is
        still running, or not one frame could be decoded; the file is left as it was.
    """
    video = Path(video)
    side = sidecar(video)
    with open(video, "rb") as f:
        boxes = _boxes(f)
    if b"moov" in boxes:
        side.unlink(missing_ok=True)
        return None
    if not side.exists():
        raise ValueError(f"{video} has no MP4 index (moov) and no {side.name} beside it: the "
                         "frame size and rate needed to recover it are unknown")  # fmt: skip
    meta = json.loads(side.read_text())
    if _alive(meta):
        raise ValueError(f"{video} is still being written (process {meta['pid']} is running): "
                         "it is finalised when that process closes it")  # fmt: skip
    if meta.get("fourcc") != _FOURCC:
        raise ValueError(f"{side}: codec {meta.get('fourcc')!r}, recovery reads {_FOURCC!r}")
    w, h, fps = int(meta["width"]), int(meta["height"]), float(meta["fps"])
    start, end = boxes.get(b"mdat", (0, 0))
    stream = video.with_name(video.name + ".recovering.m4v")
    fixed = video.with_name(video.name + ".recovering.mp4")
    n = 0
    try:
        with open(video, "rb") as src, open(stream, "wb") as dst:
            dst.write(_decoder_config(w, h, fps))
            src.seek(start)
            left = end - start
            while left > 0:
                chunk = src.read(min(left, 1 << 22))
                if not chunk:
                    break
                dst.write(chunk)
                left -= len(chunk)
        cap = cv2.VideoCapture(str(stream), cv2.CAP_FFMPEG)
        out = cv2.VideoWriter(str(fixed), cv2.VideoWriter_fourcc(*_FOURCC), fps, (w, h))
        prev = None  # the last frame read is the one the kill cut short: it is dropped
        while True:
            ok, frame = cap.read()
            if not ok or frame.shape[:2] != (h, w):
                break
            if prev is not None:
                out.write(prev)
                n += 1
            prev = frame
        cap.release()
        out.release()
        if n == 0:
            raise ValueError(f"{video}: no whole frame in its {end - start} bytes of video data")
        os.replace(fixed, video)
        side.unlink()
    finally:
        stream.unlink(missing_ok=True)
        fixed.unlink(missing_ok=True)
    logger.warning("recovered %s: %d frames (it had not been finalised)", video, n)
    return n


def recover_videos(videos: list[Path]) -> dict[str, int | str]:
    """Recover each video: {file name: frames recovered, "complete" or "failed: why"}."""
    out: dict[str, int | str] = {}
    for v in videos:
        try:
            n = recover_video(v)
        except (OSError, ValueError) as e:
            logger.error("could not recover %s: %s", v, e)
            out[v.name] = f"failed: {e}"
        else:
            out[v.name] = "complete" if n is None else n
    return out


def recover_run(run_dir: str | Path) -> dict[str, int | str]:
    """Recover every unfinalised video of a run folder (see :func:`recover_videos`)."""
    videos = []
    for side in sorted(Path(run_dir).glob(f"*.mp4{SIDECAR}")):
        video = side.with_name(side.name.removesuffix(SIDECAR))
        if video.exists():
            videos.append(video)
        else:
            logger.warning("%s: its video is gone; removing the sidecar", side)
            side.unlink()
    return recover_videos(videos)
