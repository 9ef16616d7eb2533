"""Replay recorded data through the live path: videos, TIFF stacks, image folders, DM3/DM4.

The files are read by :func:`loopline.io.frames.open_frames` (the same reader as ``loopline
analyze``; see there for formats, rates and pixel sizes). Files without a rate of their own
replay at :data:`DEFAULT_FPS` when paced. Each frame carries its time on the file's own axis
(``meta["time_s"]``, :meth:`~loopline.io.frames.FrameFile.stamped`), which the daemon uses
instead of the replay clock, and the series start the file's own rate
(``meta["input_fps"]``, None where it states none), at which the annotated video is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...io.frames import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    FrameFile,
    as_gray,
    open_frames,
    series_id,
)
from .base import Frame, SeriesEnd, SeriesStart, Source

__all__ = [
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FileSource",
    "FrameFile",
    "as_gray",
    "open_frames",
]

DEFAULT_FPS = 25.0


class FileSource(Source):
    """Replay a file or folder as one series, at its own rate or a chosen one.

    Parameters
    ----------
    path : str or Path
        See :func:`open_frames`.
    fps : float, optional
        Frames per second; ``None`` = the file's own rate (else :data:`DEFAULT_FPS`),
        ``math.inf`` = as fast as the consumer takes them.
    series : str, optional
        Series id (default: the file's stem).
    max_frames : int, optional
        Stop after this many frames.
    loop : bool
        Start over at the end (same series, indices keep counting) until closed or
        ``max_frames``.
    pixel_size_nm : float, optional
        Overrides what the file says.
    times_from_names : str, optional
        An image folder's frame times from its file names (irregular sampling): a pattern of
        :func:`loopline.calibration.frame_times_from_names` ("" = the last number of each
        name is the frame number, at number / ``names_fps`` s). None: the folder's own axis.
    names_fps : float, optional
        The frame rate that turns frame numbers in names into times (else the folder's own).

    Notes
    -----
    Frames are paced on an absolute schedule (no drift); a consumer that falls behind gets
    the next frame at once, without a burst to catch up. ``timestamp_s`` is the emission
    time, as a camera would stamp it; ``meta["file_index"]`` is the frame's index in the file
    and ``meta["time_s"]`` its time on the file's own axis (None where the file states none,
    and when looping, where that axis restarts).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float | None = None,
        series: str | None = None,
        max_frames: int | None = None,
        loop: bool = False,
        pixel_size_nm: float | None = None,
        times_from_names: str | None = None,
        names_fps: float | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self._ff = open_frames(self.path)
        #: frame times from the file names (times_from_names), else None: the file's own
        self.name_times: tuple[float, ...] | None = None
        if times_from_names is not None:
            from ...calibration import frame_times_from_names

            if self._ff.kind != "folder":
                raise ValueError(f"times from file names need a folder of image files, got a "
                                 f"{self._ff.kind} ({self.path.name})")  # fmt: skip
            self.name_times = frame_times_from_names(self._ff.files, times_from_names,
                                                     fps=names_fps or self._ff.fps)  # fmt: skip
        self._frames: Iterator[tuple[np.ndarray, float | None]] = self._ff.stamped()
        rate = fps if fps is not None else (self._ff.fps or DEFAULT_FPS)
        if not rate > 0:
            raise ValueError(f"fps must be > 0 (or inf), got {rate}")
        self.fps = float(rate)
        self._interval = 0.0 if math.isinf(self.fps) else 1.0 / self.fps
        self.series = series or series_id(self.path)
        self.max_frames = max_frames
        self.loop = loop
        self.pixel_size_nm = pixel_size_nm if pixel_size_nm is not None else self._ff.pixel_size_nm
        self.truth = self._ff.truth
        self._state = "start"  # start -> frames -> end -> done
        self._index = 0
        self._file_index = 0
        self._pending: tuple[np.ndarray, float | None] | None = None
        self._due: float | None = None

    def _next_image(self) -> tuple[np.ndarray, float | None] | None:
        """The next frame and its time on the file's axis (None once looped: it restarts)."""
        if self.max_frames is not None and self._index >= self.max_frames:
            return None
        item = next(self._frames, None)
        if item is None and self.loop and self._index > 0:
            self._frames = self._ff.stamped()
            self._file_index = 0
            item = next(self._frames, None)
        if item is not None and self.loop:
            item = (item[0], None)
        return item

    def get(self, timeout: float | None = None) -> SeriesStart | Frame | SeriesEnd | None:
        if self._closed or self._state == "done":
            raise StopIteration
        if self._state == "start":
            self._state = "frames"
            self._counters["series"] += 1
            first = self._next_image()
            self._pending = first
            shape = None if first is None else first[0].shape
            dtype = None if first is None else first[0].dtype.name
            return SeriesStart(self.series, time.time(), shape=shape, dtype=dtype,
                               pixel_size_nm=self.pixel_size_nm,
                               frames=self._expected(),
                               meta={"source": str(self.path), "kind": self._ff.kind,
                                     "fps": self.fps, "input_fps": self._ff.fps})  # fmt: skip
        if self._state == "frames":
            if self._pending is None:
                self._pending = self._next_image()
            if self._pending is None:
                self._state = "done"
                return SeriesEnd(self.series, time.time(), frames=self._index,
                                 frames_sent=self._index)  # fmt: skip
            now = time.monotonic()
            if self._due is not None and self._due > now:
                wait = self._due - now
                if timeout is not None and wait > timeout:
                    time.sleep(max(timeout, 0.0))
                    return None
                time.sleep(wait)
                now = time.monotonic()
            if self._interval:
                late = self._due is not None and now - self._due > self._interval
                base = now if (self._due is None or late) else self._due
                self._due = base + self._interval
            (img, t_file), self._pending = self._pending, None
            if self.name_times is not None and not self.loop:  # looped: no time axis
                t_file = self.name_times[self._file_index]
            frame = Frame(self.series, self._index, time.time(), img,
                          pixel_size_nm=self.pixel_size_nm,
                          meta={"file_index": self._file_index, "time_s": t_file})  # fmt: skip
            self._index += 1
            self._file_index += 1
            self._counters["messages"] += 1
            self._counters["received"] += 1
            return frame
        raise StopIteration  # pragma: no cover

    def _expected(self) -> int | None:
        if self.loop:
            return self.max_frames
        if self._ff.count is None:
            return self.max_frames
        return self._ff.count if self.max_frames is None else min(self._ff.count, self.max_frames)

    def close(self) -> None:
        if not self._closed:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        super().close()
