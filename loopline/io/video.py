"""The annotated video of a run: H.264 in fragmented MP4 (PyAV), or MPEG-4 Part 2 (OpenCV).

``h264`` (the default where PyAV is installed): libx264 at preset ``ultrafast``, no frame
delay (``tune=zerolatency``), a constant rate factor (``crf``, default 32: an annotated review
video of noisy frames, about 0.4 GB/h at 512² and 25 frames/s where mp4v writes 4.7 GB/h), one
keyframe a second, in a *fragmented* MP4 with one fragment per frame, each flushed to the file
as it is muxed (``movflags=frag_every_frame+empty_moov+default_base_moof``,
``flush_packets=1``): the index is written up front, so a video whose writer was killed
(SIGKILL, out of memory) plays up to the frame before the one being written. Nothing needs
recovering (a power cut loses what the OS had not written yet).

``mp4v``: OpenCV's MPEG-4 Part 2 writer, the fallback without PyAV. It writes the MP4 index
only when the video is closed; a killed writer leaves a file that needs
:mod:`loopline.daemon.video_recovery` (the recorder marks it with a sidecar).

Frames are BGR uint8 (H, W, 3); a frame of another size is resized to the first one's.
"""

from __future__ import annotations

import importlib.util
import logging
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CODECS", "VideoWriter", "default_codec"]

#: the codecs :class:`VideoWriter` writes, and whether each survives a killed writer as is
CODECS = {"h264": True, "mp4v": False}
_MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"
_KEYFRAMES_PER_S = 1.0


def default_codec() -> str:
    """``h264`` where PyAV is installed, else ``mp4v``."""
    return "h264" if importlib.util.find_spec("av") is not None else "mp4v"


class VideoWriter:
    """One video file, opened on the first frame (see the module docstring).

    Parameters
    ----------
    path : path of the ``.mp4`` to write.
    fps : frame rate written into the file, frames/s.
    codec : ``"h264"``, ``"mp4v"`` or ``"auto"`` (:func:`default_codec`).
    crf : H.264 constant rate factor (0-51, lower is better and larger).
    """

    def __init__(self, path: str | Path, fps: float, *, codec: str = "auto", crf: int = 32,
                 threads: int = 1) -> None:  # fmt: skip
        codec = default_codec() if codec == "auto" else codec
        if codec not in CODECS:
            raise ValueError(f"video codec: expected one of {sorted(CODECS)} or 'auto', got "
                             f"{codec!r}")  # fmt: skip
        if codec == "h264" and importlib.util.find_spec("av") is None:
            raise ImportError("video codec h264 needs PyAV (pip install av); or set the codec "
                              "to mp4v")  # fmt: skip
        if not (fps > 0 and np.isfinite(fps)):
            raise ValueError(f"video frame rate: expected > 0 frames/s, got {fps!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.codec = codec
        self.crf = int(crf)
        self.threads = int(threads)
        self.size: tuple[int, int] | None = None  # (width, height)
        self.frames = 0
        self._cv: cv2.VideoWriter | None = None
        self._av = None  # (container, stream)

    @property
    def crash_safe(self) -> bool:
        """True where a killed writer leaves a playable file (fragmented MP4)."""
        return CODECS[self.codec]

    def _open(self, w: int, h: int) -> None:
        if self.codec == "mp4v":
            self._cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                       self.fps, (w, h))  # fmt: skip
            if not self._cv.isOpened():
                raise OSError(f"cannot open {self.path} for writing (OpenCV mp4v)")
            return
        import av

        rate = Fraction(self.fps).limit_denominator(1001)
        try:
            box = av.open(str(self.path), "w", format="mp4",
                          options={"movflags": _MOVFLAGS, "flush_packets": "1"})
        except (OSError, av.FFmpegError) as e:
            raise OSError(f"cannot open {self.path} for writing (H.264): {e}") from e
        stream = box.add_stream("libx264", rate=rate, options={
            "preset": "ultrafast", "crf": str(self.crf), "tune": "zerolatency"})  # fmt: skip
        # yuv420p needs even sides: an odd frame is padded by one pixel
        stream.width, stream.height = w + (w & 1), h + (h & 1)
        stream.pix_fmt = "yuv420p"
        stream.gop_size = max(1, round(self.fps / _KEYFRAMES_PER_S))
        stream.codec_context.thread_count = self.threads
        self._av = (box, stream)

    def write(self, bgr: np.ndarray) -> None:
        """Append one BGR frame."""
        h, w = bgr.shape[:2]
        if self.size is None:
            self._open(w, h)
            self.size = (w, h)
        elif (w, h) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
        if self._cv is not None:
            self._cv.write(bgr)
        else:
            import av

            box, stream = self._av
            if (stream.width, stream.height) != self.size:
                w, h = self.size
                bgr = cv2.copyMakeBorder(bgr, 0, stream.height - h, 0, stream.width - w,
                                         cv2.BORDER_REPLICATE)  # fmt: skip
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
            for packet in stream.encode(frame):
                box.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._cv is not None:
            self._cv.release()
            self._cv = None
        if self._av is not None:
            box, stream = self._av
            self._av = None
            try:
                for packet in stream.encode():
                    box.mux(packet)
            finally:
                box.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
