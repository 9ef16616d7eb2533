"""A run as a HyperSpy signal file (``.hspy``; ``.zspy`` where zarr is installed).

:func:`to_hspy` writes the analysed frames as one HyperSpy ``Signal2D`` through RosettaSciIO
(``rsciio.hspy`` / ``rsciio.zspy``; HyperSpy itself is not needed to write it), with

* calibrated axes: ``time`` (navigation, s: ``series.csv``'s ``time_s``; a uniform axis
  with ``scale``/``offset`` when the frames are evenly spaced, else a non-uniform axis
  holding every frame time), ``y`` and ``x`` (signal, nm with the run's pixel size, else px).
  A DM3/DM4 input's pixel size reaches the run's calibration and so these axes;
* ``metadata.General`` (title, the input's name), ``metadata.Signal``
  (``signal_type`` ``""``, ``quantity`` "Intensity"), and the measurements in
  ``metadata.loopline``: ``summary`` (``summary.json``), ``series`` (every numeric column
  of ``series.csv``, one value per frame: counts, mean lengths, spacings, densities, drift),
  ``tracks`` and ``pairs`` (every column of ``tracks.csv`` / ``pairs.csv``: per-object
  positions, velocities, loop axes; per-pair spacings), ``units`` of the axes;
* the measured objects as HyperSpy (>= 2.0) markers in ``metadata.Markers``, stored as
  ``s.add_marker(m, permanent=True)`` stores them (``class``, ``name``, ``plot_on_signal``,
  ``offset_transform``, ``transform`` and the marker's ``kwargs``, whose positions are ragged
  arrays with one entry per frame), in the units of the ``y``/``x`` axes (nm, else px):

  - ``dislocation_lines``: ``Lines``, ``segments`` (n, 2, 2) ``[[x0, y0], [x1, y1]]`` per
    frame: the pieces of every line's centre line (``tracks.csv``'s ``points_px``, see
    :meth:`loopline.api.Run.lines`), one segment between each two neighbouring points;
  - ``loops``: ``Ellipses``, ``offsets`` (n, 2) centres, ``widths`` the full major and
    ``heights`` the full minor axes, ``angles`` the major axis' angle to x in degrees (image
    coordinates, y down, as plotted); ``loop_centres``: ``Points`` at the centres of loops
    without fitted axes, where there are any.

  A marker with no object in any frame is left out.

Read back with ``hs.load("run.hspy")`` (``s.metadata.loopline.series.mean_spacing_nm``;
``s.plot()`` draws the markers) or with ``rsciio.hspy.file_reader``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Run
from .napari import pick_series

logger = logging.getLogger(__name__)

__all__ = ["signal_dict", "to_hspy"]

_SUFFIXES = (".hspy", ".zspy")


def _columns(df) -> dict[str, Any]:
    """A table as {column: array}: numbers as float64 (NaN for empty cells), text as str."""
    out: dict[str, Any] = {}
    for c in df.columns:
        col = df[c]
        if col.dtype.kind in "biuf" or str(col.dtype) == "Int64":
            out[c] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[c] = np.array(["" if v is None or v != v else str(v) for v in col], dtype=str)
    return out


def _summary(d: Any) -> Any:
    """summary.json made storable as HDF5 attributes: dict keys as str, nested lists as JSON."""
    if isinstance(d, dict):
        return {str(k): _summary(v) for k, v in d.items()}
    if isinstance(d, list):
        if d and all(isinstance(v, int | float) and not isinstance(v, bool) for v in d):
            return np.asarray(d, dtype=np.float64)
        return json.dumps(d)
    if isinstance(d, bool):
        return int(d)
    return d


def _time_axis(t: np.ndarray) -> dict[str, Any]:
    ax: dict[str, Any] = {"name": "time", "units": "s", "navigate": True, "size": len(t)}
    if len(t) < 2:
        return {**ax, "scale": 1.0, "offset": float(t[0]) if len(t) else 0.0}
    step = np.diff(t)
    if np.all(np.isfinite(step)) and np.allclose(step, step.mean(), rtol=1e-6, atol=1e-9):
        return {**ax, "scale": float(step.mean()), "offset": float(t[0])}
    return {**ax, "axis": np.asarray(t, np.float64)}  # non-uniform (HyperSpy >= 1.7)


def _ragged(place: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """One array per frame (object array of length ``n``): the ``values`` rows whose
    ``place`` (index of the frame in the signal) is that frame's, in their order."""
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = np.ascontiguousarray(values[place == i], dtype=np.float64)
    return out


def _markers(run: Run, sid: str | None, frames: np.ndarray, step: float) -> dict[str, Any]:
    """``metadata.Markers`` of the signal (see the module docstring); ``step``: nm (or px)
    per px of the frames, as the ``y``/``x`` axes."""
    place = {int(f): i for i, f in enumerate(frames)}
    n = len(frames)
    out: dict[str, Any] = {}

    def at(d):
        return d[d["frame"].isin(place)].reset_index(drop=True)

    lines = at(run.lines(series=sid))
    if not lines.empty:
        pieces = [np.stack([p[:-1], p[1:]], axis=1) for p in lines["points"]]
        ends = np.concatenate(pieces).reshape(-1, 2, 2)
        where = np.repeat(lines["frame"].map(place).to_numpy(int), [len(p) for p in pieces])
        out["dislocation_lines"] = {
            "class": "Lines", "name": "dislocation_lines", "plot_on_signal": True,
            "offset_transform": "display", "transform": "data",
            "kwargs": {"segments": _ragged(where, ends * step, n), "colors": "yellow",
                       "linewidths": 2.0},
        }  # fmt: skip

    loops = at(run.loops(series=sid))
    axes = loops["major_px"].notna() & loops["minor_px"].notna()
    fitted, bare = loops[axes], loops[~axes]
    if not fitted.empty:
        where = fitted["frame"].map(place).to_numpy(int)
        xy = fitted[["x_px", "y_px"]].to_numpy(float) * step
        angle = np.nan_to_num(fitted["angle_deg"].to_numpy(float))
        out["loops"] = {
            "class": "Ellipses", "name": "loops", "plot_on_signal": True,
            "offset_transform": "data", "transform": "display",
            "kwargs": {"offsets": _ragged(where, xy, n),
                       "widths": _ragged(where, fitted["major_px"].to_numpy(float) * step, n),
                       "heights": _ragged(where, fitted["minor_px"].to_numpy(float) * step, n),
                       "angles": _ragged(where, angle, n), "units": "xy",
                       "facecolors": "none", "edgecolors": "cyan", "linewidths": 1.5},
        }  # fmt: skip
    if not bare.empty:
        where = bare["frame"].map(place).to_numpy(int)
        out["loop_centres"] = {
            "class": "Points", "name": "loop_centres", "plot_on_signal": True,
            "offset_transform": "data", "transform": "display",
            "kwargs": {"offsets": _ragged(where, bare[["x_px", "y_px"]].to_numpy(float) * step,
                                          n),
                       "sizes": 10.0, "units": "points", "facecolors": "none",
                       "edgecolors": "cyan"},
        }  # fmt: skip
    return out


def signal_dict(run: Run | str | Path, *, series: str | None = None,
                frames: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """The RosettaSciIO signal dictionary of a run (what :func:`to_hspy` writes).

    Parameters
    ----------
    run : Run or path
    series : str, optional
        Which series of a run with several.
    frames : (T, H, W) array, optional
        The analysed frames; read again from the run's input when None
        (:meth:`loopline.api.Run.frame_stack`).
    """
    run = run if isinstance(run, Run) else Run(run)
    sid = pick_series(run, series)
    rows = run.series if sid is None else run.series[run.series["series"] == sid]
    rows = rows.sort_values("frame", kind="stable")
    data = run.frame_stack() if frames is None else np.asarray(frames)
    if data.ndim != 3 or data.shape[0] != len(rows):
        raise ValueError(f"expected frames of shape ({len(rows)}, H, W) for the {len(rows)} "
                         f"analysed frames, got {data.shape}")  # fmt: skip
    nm = run.nm_per_px
    unit, step = ("nm", nm) if nm else ("px", 1.0)
    axes = [
        _time_axis(rows["time_s"].to_numpy(float)),
        {"name": "y", "units": unit, "scale": float(step), "offset": 0.0,
         "size": int(data.shape[1]), "navigate": False},
        {"name": "x", "units": unit, "scale": float(step), "offset": 0.0,
         "size": int(data.shape[2]), "navigate": False},
    ]  # fmt: skip
    pick = (lambda t: t) if sid is None else (lambda t: t[t["series"] == sid])
    src = run.input
    title = f"loopline {sid or run.path.name}"
    loopline_md = {
        "summary": _summary(run.summary),
        "series": _columns(rows),
        "tracks": _columns(pick(run.tracks)),
        "pairs": _columns(pick(run.pairs)),
        "run_folder": str(run.path),
        "units": {"time": "s", "y": unit, "x": unit},
        "frame_index": rows["frame"].to_numpy(np.int64),
    }
    metadata: dict[str, Any] = {
        "General": {"title": title, "original_filename": src.name if src else ""},
        "Signal": {"signal_type": "", "quantity": "Intensity"},
        "loopline": loopline_md,
    }
    markers = _markers(run, sid, rows["frame"].to_numpy(np.int64), float(step))
    if markers:
        metadata["Markers"] = markers
    return {
        "data": data,
        "axes": axes,
        "metadata": metadata,
        "original_metadata": {},
        "learning_results": {},
        "attributes": {"_lazy": False},
        "models": {},
        "package_info": {"package": "loopline", "package_version": _version()},
        "tmp_parameters": {},
    }


def _version() -> str:
    from .._version import __version__

    return __version__


def to_hspy(run: Run | str | Path, path: str | Path, *, series: str | None = None,
            frames: np.ndarray | None = None) -> Path:  # fmt: skip
    """Write a run's analysed frames and measurements as a HyperSpy signal file.

    Parameters
    ----------
    run : Run or path
        A run (:func:`loopline.open_run`) or its folder; its input must still be there (or
        give ``frames``).
    path : str or Path
        ``*.hspy`` (HDF5), or ``*.zspy`` (zarr; needs the ``zarr`` package).
    series : str, optional
        Which series of a run with several.
    frames : (T, H, W) array, optional
        The analysed frames, if already in memory.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Another suffix, or frames that do not match the run.
    ImportError
        ``.zspy`` without zarr.

    Examples
    --------
    >>> loopline.to_hspy(run, "run.hspy")                                 # doctest: +SKIP
    >>> import hyperspy.api as hs                                        # doctest: +SKIP
    >>> s = hs.load("run.hspy"); s.axes_manager                          # doctest: +SKIP
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"expected a .hspy or .zspy file name, got {p.name!r}")
    need = ("rsciio", "h5py") if suffix == ".hspy" else ("rsciio",)
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"writing {suffix} needs {' and '.join(missing)}, not installed: "
                          "pip install 'loopline[hyperspy]'")  # fmt: skip
    if suffix == ".zspy" and importlib.util.find_spec("zarr") is None:
        raise ImportError("writing .zspy needs the zarr package (pip install zarr); "
                          "write .hspy instead")  # fmt: skip
    sig = signal_dict(run, series=series, frames=frames)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".hspy":
        from rsciio.hspy import file_writer
    else:
        from rsciio.zspy import file_writer
    file_writer(str(p), sig, show_progressbar=False)
    logger.info("wrote %s: %d frames, axes %s", p, sig["data"].shape[0],
                ", ".join(f"{a['name']} ({a['units']})" for a in sig["axes"]))  # fmt: skip
    return p
