"""Frames from recorded files: videos, TIFF stacks, image folders, DM3/DM4, EMD.

One reader for ``loopline analyze`` (:mod:`loopline.analysis.sources`), the daemon's file
replay (:class:`loopline.daemon.ingest.files.FileSource`) and the camera simulator.

=================================  ==========================  ==================================
input                              read with                   own rate / pixel size from
=================================  ==========================  ==================================
``.mp4 .avi .mov .mkv .m4v ...``   OpenCV ``VideoCapture``     the container's fps / none
``.tif .tiff`` (one or many pages) tifffile                    ImageJ ``finterval`` / resolution
folder of ``.png .tif .jpg .bmp``  OpenCV / tifffile           ``truth.json`` (synthetic
(or its ``images/`` subfolder)                                 datasets: ``fps``, ``nm_per_px``)
``.dm3 .dm4``                      RosettaSciIO                time axis scale / signal axes
``.emd`` (Velox, Berkeley/NCEM)    RosettaSciIO                time axis / signal axes
=================================  ==========================  ==================================

Frames come out as 2-D uint8 / uint16 / float32 (colour is turned to grey, other dtypes to
float32). Folders are read in natural order (``f2`` before ``f10``). An EMD file (Velox from
Thermo Fisher, or Berkeley/NCEM) may hold several signals: its image series is read (a 2-D
image or a frames × y × x stack; of several, the one with most frames), the rest (spectra,
spectrum images, diffraction) is left. Each frame's time on the file's own axis comes with it
from :meth:`FrameFile.stamped` (a video's container timestamps, an EMD file's time axis, else
index / the file's rate); both ``loopline analyze`` and ``loopline serve --from`` take
their time axis from there unless a calibration profile gives one (``fps``,
``frame_times_s``), and name the series after the file (:func:`series_id`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DM_SUFFIXES",
    "EMD_SUFFIXES",
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FrameFile",
    "as_gray",
    "image_files",
    "natural_key",
    "open_frames",
    "pixel_size_from_file",
    "read_image",
    "series_id",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".wmv", ".mpg", ".mpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
DM_SUFFIXES = (".dm3", ".dm4")
EMD_SUFFIXES = (".emd",)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

#: Length unit (lower case, as found in file metadata) -> nm.
UNIT_TO_NM = {"m": 1e9, "meter": 1e9, "cm": 1e7, "centimeter": 1e7, "mm": 1e6,
              "millimeter": 1e6, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3,
              "microns": 1e3, "micrometer": 1e3, "nm": 1.0, "nanometer": 1.0, "a": 0.1,
              "å": 0.1, "angstrom": 0.1, "pm": 1e-3}  # fmt: skip
_UNIT_TO_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6}  # DM time axes


@dataclass(frozen=True)
class FrameFile:
    """What :func:`open_frames` found: how to read the frames and what is known of them.

    Iterating it reads the frames from the start, each time anew (grey (H, W) arrays).
    """

    path: Path
    kind: str  # "video", "tiff", "folder", "dm", "emd", "image"
    read: Callable[[], Iterator[np.ndarray]]
    count: int | None = None
    fps: float | None = None
    pixel_size_nm: float | None = None
    truth: Path | None = None  # a truth.json beside the frames (synthetic datasets)
    files: tuple[Path, ...] = ()  # "folder": the image files, in reading order
    read_stamped: Callable[[], Iterator[tuple[np.ndarray, float | None]]] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.read()

    def time_of(self, index: int) -> float | None:
        """Time (s) of frame ``index`` from the file's rate; None where it states none."""
        return index / self.fps if self.fps else None

    def stamped(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """The frames with their times on the file's own time axis, s.

        Videos: the container's timestamp of each frame (index / rate where the container
        gives none); an EMD file: its time axis (offset + index × step); other files: index /
        the file's rate (TIFF ``finterval``, DM time axis, ``truth.json``); None where the
        file states no time.
        """
        if self.read_stamped is not None:
            return self.read_stamped()
        return ((img, self.time_of(i)) for i, img in enumerate(self.read()))


# ----------------------------------------------------------------------------- helpers


def series_id(path: str | Path) -> str:
    """The series id of a recorded file or folder: its stem (``"file"`` for none)."""
    return Path(path).stem or "file"


def natural_key(p: Path) -> list[Any]:
    """Sort key of a file name with its digit runs compared as numbers (``f2`` < ``f10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def as_gray(image: np.ndarray, *, bgr: bool = True) -> np.ndarray:
    """A (H, W) uint8 / uint16 / float32 image from whatever a reader returned.

    Colour (H, W, 3|4) becomes grey (OpenCV weights; ``bgr`` tells the channel order);
    bool becomes uint8 0/1; other integer and float types become float32.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        import cv2

        if a.dtype not in (np.uint8, np.uint16, np.float32):
            a = a.astype(np.float32)
        code = (cv2.COLOR_BGR2GRAY if a.shape[2] == 3 else cv2.COLOR_BGRA2GRAY) if bgr else (
            cv2.COLOR_RGB2GRAY if a.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)  # fmt: skip
        a = cv2.cvtColor(np.ascontiguousarray(a), code)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise ValueError(f"a frame must be (H, W) or (H, W, 3|4), got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype not in (np.uint8, np.uint16, np.float32):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def read_image(path: Path) -> np.ndarray:
    """One image file as a grey frame (TIFF through tifffile, the rest through OpenCV)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return as_gray(tifffile.imread(path), bgr=False)
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"OpenCV cannot read the image {path}")
    return as_gray(img)


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (:data:`IMAGE_SUFFIXES`), in natural order."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                  key=natural_key)  # fmt: skip


# ----------------------------------------------------------------------------- pixel size


def pixel_size_from_file(path: str | Path) -> float | None:
    """Pixel size (nm/px) from an image file's metadata, or None where it holds none.

    TIFF: ImageJ ``unit`` with the XResolution tag (pixels per unit), else the resolution
    tags with ResolutionUnit inch/cm. DM3/DM4 and EMD (RosettaSciIO): the scale and units of
    the last (x) signal axis (of the EMD file's image series). Unreadable metadata is logged
    and gives None.
    """
    p = Path(path)
    suf = p.suffix.lower()
    try:
        if suf in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                return _tiff_pixel_size(tif)
        if suf in DM_SUFFIXES:
            return _dm_scales(_dm_signal(p)["axes"])[1]
        if suf in EMD_SUFFIXES:
            return _dm_scales(_emd_signal(p)["axes"])[1]
    except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError) as e:
        logger.warning("could not read the pixel size of %s: %s", p, e)
    return None


def _tiff_pixel_size(tif: Any) -> float | None:
    """nm/px of an open ``tifffile.TiffFile`` (see :func:`pixel_size_from_file`)."""
    tags = tif.pages[0].tags
    xres = tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value
    if num == 0 or den == 0:
        return None
    px_per_unit = num / den
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).strip().lower().replace("\\u00b5", "µ")
    if unit in UNIT_TO_NM:
        return UNIT_TO_NM[unit] / px_per_unit
    runit = tags.get("ResolutionUnit")
    code = int(runit.value) if runit is not None else 2
    if code == 3:  # centimetre
        return 1e7 / px_per_unit
    if code == 2 and not ij and px_per_unit > 1e4:
        # inches: only plausible for microscopy when the density is far above screen dpi
        return 2.54e7 / px_per_unit
    return None


def _dm_signal(path: Path) -> dict[str, Any]:
    """The first image signal (2-D or more) of a DM3/DM4 file, read lazily."""
    try:
        from rsciio.digitalmicrograph import file_reader
    except ImportError:
        raise ImportError("reading DM3/DM4 needs RosettaSciIO, which is not installed: "
                          "pip install 'loopline[hyperspy]'") from None  # fmt: skip
    signals = [s for s in file_reader(str(path), lazy=True) if np.ndim(s["data"]) >= 2]
    if not signals:
        raise ValueError(f"no image data in {path}")
    return signals[0]


def _dm_scales(axes: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(fps, nm/px) of a DM (or EMD) signal: a navigation axis in s, ms or µs; the last signal
    (x) axis."""
    fps = None
    for a in axes:
        scale = a.get("scale")
        unit = _UNIT_TO_S.get(str(a.get("units") or "").strip())
        if a.get("navigate") and unit and scale and scale > 0:
            # DM stores scales as float32: 0.04 s reads back as 0.03999999910593033
            fps = round(1.0 / (float(scale) * unit), 6)
    spatial = [a for a in axes if not a.get("navigate")] or axes
    pixel = None
    if spatial:
        ax = spatial[-1]
        unit = str(ax.get("units") or "").strip().lower()
        scale = float(ax.get("scale") or 0.0)
        if unit in UNIT_TO_NM and scale > 0:
            pixel = scale * UNIT_TO_NM[unit]
    return fps, pixel


_UNITLESS = ("", "px", "pixel", "pixels", "<undefined>", "none")


def _units(axis: dict[str, Any]) -> str:
    return str(axis.get("units") or "").strip()


def _emd_layout(sig: dict[str, Any]) -> tuple[int, ...] | None:
    """The axis order (frames, y, x) or (y, x) of an EMD signal that is an image series.

    None for anything else: spectra, spectrum images, 4-D data, complex (FFT, DPC) images,
    axes in other units than lengths (nm, µm, Å, pm, ...) or none (px). Velox marks a stack's
    frame axis as the navigation axis; the Berkeley (NCEM) reader marks none, so the frame
    axis is the one in time units, else the one of no unit beside two length axes, else the
    first. Axes named ``y`` and ``x`` are taken in that order; else a stack read with its
    frame axis last (a file written frames-first, as NCEM's ``dim1`` = time, which the reader
    reverses) is reversed whole.
    """
    data = sig.get("data")
    axes = sig.get("axes") or []
    shape = tuple(np.shape(data))
    if len(shape) not in (2, 3) or len(axes) != len(shape):
        return None
    if np.dtype(getattr(data, "dtype", np.float32)).kind == "c":
        return None

    def length(a: dict[str, Any]) -> bool:
        u = _units(a).lower()
        return u in UNIT_TO_NM or u in _UNITLESS

    nav = [i for i, a in enumerate(axes) if a.get("navigate")]
    frame: int | None = None
    if len(shape) == 3:
        if len(nav) == 1:
            frame = nav[0]
        elif nav:
            return None
        else:
            timed = [i for i, a in enumerate(axes) if _units(a) in _UNIT_TO_S]
            other = [i for i, a in enumerate(axes) if _units(a).lower() not in UNIT_TO_NM]
            frame = timed[0] if len(timed) == 1 else other[0] if len(other) == 1 else 0
        a = axes[frame]
        if _units(a) not in _UNIT_TO_S and _units(a).lower() not in _UNITLESS:
            return None
    elif nav:
        return None
    yx = [i for i in range(len(shape)) if i != frame]
    if not all(length(axes[i]) for i in yx):
        return None
    names = [str(axes[i].get("name") or "").strip().lower() for i in yx]
    if sorted(names) == ["x", "y"]:
        yx = [yx[names.index("y")], yx[names.index("x")]]
    elif frame is not None and frame == len(shape) - 1:
        yx = yx[::-1]
    return tuple(yx) if frame is None else (frame, *yx)


def _emd_describe(sig: dict[str, Any]) -> str:
    title = ((sig.get("metadata") or {}).get("General") or {}).get("title") or "untitled"
    units = ", ".join(_units(a) or "no unit" for a in sig.get("axes") or [])
    return f"{title!r} of shape {tuple(np.shape(sig.get('data')))} ({units})"


def _emd_signal(path: Path, *, log: bool = True) -> dict[str, Any]:
    """The image series of an EMD file (Velox or Berkeley/NCEM), read lazily.

    Its ``data`` is (frames, y, x) or (y, x), its ``axes`` in that order with the frame axis
    marked as the navigation axis (see :func:`_emd_layout`); of several series the one with
    the most frames (the first of those), said in a DEBUG log (``log``).
    """
    try:
        import h5py  # noqa: F401  (rsciio's EMD reader needs it)
        from rsciio.emd import file_reader
    except ImportError:
        raise ImportError("reading EMD needs RosettaSciIO and h5py, which are not installed: "
                          "pip install 'loopline[hyperspy]'") from None  # fmt: skip
    try:
        # Velox: images only (a spectrum image is slow to read, and not wanted)
        signals = file_reader(str(path), lazy=True, select_type="images")
    except ModuleNotFoundError as e:  # Velox with a spectrum image asks for `sparse`
        raise ImportError(f"reading {path.name} needs a package that is not installed: "
                          f"{' '.join(str(e).split())}") from None  # fmt: skip
    except (OSError, KeyError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read {path.name} as an EMD file (Velox or Berkeley/NCEM): "
                         f"{msg}") from None  # fmt: skip
    found = [(i, s, lay) for i, s in enumerate(signals) if (lay := _emd_layout(s)) is not None]
    if not found:
        what = "; ".join(_emd_describe(s) for s in signals) or "no signal"
        raise ValueError(f"no image series in {path}: expected a 2-D image or a frames × y × x "
                         f"stack with length (or no) units, found {what}")  # fmt: skip
    i, sig, order = max(found, key=lambda f: (np.shape(f[1]["data"])[f[2][0]]
                                              if len(f[2]) == 3 else 1, -f[0]))  # fmt: skip
    if log and len(signals) > 1:
        rest = "; ".join(_emd_describe(s) for j, s in enumerate(signals) if j != i)
        logger.debug("%s holds %d signals; reading #%d, %s, as the image series (skipped: %s)",
                     path.name, len(signals), i, _emd_describe(sig), rest)  # fmt: skip
    axes = [dict(sig["axes"][k], navigate=len(order) == 3 and k == order[0]) for k in order]
    data = sig["data"]
    if tuple(order) != tuple(range(len(order))):
        data = data.transpose(order)
    return {**sig, "data": data, "axes": axes}


# ----------------------------------------------------------------------------- readers


def _video(path: Path) -> FrameFile:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open the video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()

    rate = fps if fps and math.isfinite(fps) and fps > 0 else None

    def stamped() -> Iterator[tuple[np.ndarray, float | None]]:
        cap = cv2.VideoCapture(str(path))
        prev = -math.inf
        try:
            for i in itertools.count():
                ok, img = cap.read()
                if not ok:
                    return
                # the decoded frame's presentation time (FFmpeg backend), to the µs
                t = round(cap.get(cv2.CAP_PROP_POS_MSEC) / 1e3, 6)
                if not (math.isfinite(t) and t >= 0 and t > prev):
                    t = i / rate if rate else None
                prev = t if t is not None else prev
                yield as_gray(img), t
        finally:
            cap.release()

    def frames() -> Iterator[np.ndarray]:
        return (img for img, _ in stamped())

    return FrameFile(path, "video", frames, count if count > 0 else None, rate,
                     read_stamped=stamped)  # fmt: skip


def _tiff(path: Path) -> FrameFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = series.shape
        ij = tif.imagej_metadata or {}
        fps = None
        if ij.get("finterval"):
            fps = 1.0 / float(ij["finterval"])
        elif ij.get("fps"):
            fps = float(ij["fps"])
        pixel = _tiff_pixel_size(tif)
        colour = series.axes.endswith("S")
    n_frames = int(np.prod(shape[: -3 if colour else -2])) if len(shape) > 2 else 1

    def frames() -> Iterator[np.ndarray]:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if n_frames == 1:
                yield as_gray(series.asarray(), bgr=False)
                return
            if len(series.pages) == n_frames:  # one page per frame: read lazily
                for page in series.pages:
                    yield as_gray(page.asarray(), bgr=False)
                return
            data = series.asarray()  # frames packed in fewer pages: read all
            data = data.reshape((n_frames, *shape[-3 if colour else -2 :]))
            for img in data:
                yield as_gray(img, bgr=False)

    return FrameFile(path, "tiff", frames, n_frames, fps, pixel)


def _folder(path: Path) -> FrameFile:
    files = image_files(path)
    if not files and (path / "images").is_dir():  # a synthetic dataset (loopline synth)
        folder = path / "images"
        files = image_files(folder)
    else:
        folder = path
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    fps = pixel = None
    truth = path / "truth.json"
    if truth.is_file():
        try:
            t = json.loads(truth.read_text("utf-8"))
            fps = float(t["fps"]) if t.get("fps") else None
            pixel = float(t["nm_per_px"]) if t.get("nm_per_px") else None
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable %s: %s", truth, e)
    return FrameFile(path, "folder", lambda: (read_image(p) for p in files), len(files), fps,
                     pixel, truth if truth.is_file() else None, tuple(files))  # fmt: skip


def _dm(path: Path) -> FrameFile:
    sig = _dm_signal(path)
    fps, pixel = _dm_scales(sig.get("axes") or [])
    nav = [a for a in sig.get("axes") or [] if a.get("navigate")]
    shape = tuple(int(s) for s in np.shape(sig["data"]))
    count = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    if len(shape) > 2 and len(nav) != len(shape) - 2:
        logger.debug("DM axes do not say which are navigation axes; using the leading ones")

    def frames() -> Iterator[np.ndarray]:
        data = _dm_signal(path)["data"]
        if len(shape) == 2:
            yield as_gray(np.asarray(data), bgr=False)
            return
        flat = data.reshape((count, *shape[-2:]))
        for i in range(count):
            yield as_gray(np.asarray(flat[i]), bgr=False)

    return FrameFile(path, "dm", frames, count, fps, pixel)


def _emd(path: Path) -> FrameFile:
    sig = _emd_signal(path)
    fps, pixel = _dm_scales(sig["axes"])
    shape = tuple(int(s) for s in np.shape(sig["data"]))
    count = shape[0] if len(shape) == 3 else 1
    t0 = 0.0
    if fps and len(shape) == 3:  # the time axis' offset, s
        ax = sig["axes"][0]
        t0 = float(ax.get("offset") or 0.0) * _UNIT_TO_S[_units(ax)]

    def stamped() -> Iterator[tuple[np.ndarray, float | None]]:
        data = _emd_signal(path, log=False)["data"]
        if len(shape) == 2:
            yield as_gray(np.asarray(data), bgr=False), None
            return
        for i in range(count):
            t = round(t0 + i / fps, 9) if fps else None
            yield as_gray(np.asarray(data[i]), bgr=False), t

    def frames() -> Iterator[np.ndarray]:
        return (img for img, _ in stamped())

    return FrameFile(path, "emd", frames, count, fps, pixel, read_stamped=stamped)


def open_frames(path: str | Path) -> FrameFile:
    """Open a video, TIFF (stack), image folder, single image, DM3/DM4 or EMD file.

    Metadata (frame count, rate, pixel size) is read now; frames are read when the
    returned :class:`FrameFile` is iterated.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or a folder holds no images.
    ValueError
        For an unknown file type or a file its reader cannot open.
    ImportError
        For DM3/DM4 or EMD without RosettaSciIO (and h5py).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        return _folder(p)
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return _video(p)
    if suffix in TIFF_SUFFIXES:
        return _tiff(p)
    if suffix in DM_SUFFIXES:
        return _dm(p)
    if suffix in EMD_SUFFIXES:
        return _emd(p)
    if suffix in IMAGE_SUFFIXES:
        return FrameFile(p, "image", lambda: iter([read_image(p)]), 1)
    raise ValueError(
        f"unsupported input {p.name}: unknown file type {suffix!r}; expected a video "
        f"({', '.join(VIDEO_SUFFIXES)}), a TIFF stack, a DM3/DM4 or EMD file, an image "
        f"({', '.join(IMAGE_SUFFIXES)}) or an image folder"
    )
