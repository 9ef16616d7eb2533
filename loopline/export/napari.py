"""A run as napari layers: frames, centre lines, loop ellipses and tracks — without napari.

:func:`to_napari` returns napari *layer data tuples* ``(data, kwargs, layer_type)``, plain
numpy data and dicts: ``viewer._add_layer_from_data(*t)`` for each, or napari's own reader
plugin (``napari RUN_DIR``, the ``napari.yaml`` manifest of this package, which points at
:func:`napari_get_reader`) adds them. napari is needed only to show them.

Coordinates
-----------
Every layer has three axes ``(t, y, x)``: ``t`` is the frame's place among the analysed frames
of the series (row order of ``series.csv``; the frame index itself where every frame was
analysed), ``y, x`` frame pixels. Each layer's ``scale`` is ``(1, nm/px, nm/px)`` where the
run knows its pixel size (else 1 px), so that napari's world coordinates and its scale bar are
in nm (the unit is in each layer's ``metadata["units"]``).

Layers
------
``frames`` (Image)
    The analysed frames, read again from the run's input (:meth:`loopline.api.Run.frames`);
    left out, with a warning, when the input is not there (a camera run).
``masks`` (Labels)
    Not made: a run folder keeps no masks (only the measurements); logged once.
``centre lines`` (Shapes, ``path``)
    Each line's centre line in each frame (``tracks.csv``'s ``points_px``, see
    :meth:`loopline.api.Run.lines`); features: track id, pile-up, rank, length, velocity.
``loops`` (Shapes, ``polygon``)
    The fitted ellipse of each loop and frame (48 points); features: track id, axes, growth.
``line tracks``, ``loop tracks`` (Tracks)
    ``(track_id, t, y, x)`` of every tracked object (lines at their centre, loops at the
    ellipse centre); lines and loops are tracked separately, so their ids are two layers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..api import Run, ellipse_polygon

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["LayerDataTuple", "is_run_folder", "napari_get_reader", "read_run", "to_napari"]

#: ``(data, kwargs, layer_type)``, as napari's readers return them.
LayerDataTuple = tuple[Any, dict[str, Any], str]


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run(run)


def pick_series(run: Run, series: str | None) -> str | None:
    """The series to show: ``series``, the run's only one, else a ValueError naming them."""
    ids = run.series_ids
    if series is not None:
        if str(series) not in ids:
            raise ValueError(f"series must be one of {', '.join(ids) or '(none)'}, got "
                             f"{series!r}")  # fmt: skip
        return str(series)
    if len(ids) > 1:
        raise ValueError(f"{run.path} holds {len(ids)} series; expected series= one of "
                         f"{', '.join(ids)}")  # fmt: skip
    return ids[0] if ids else None


def _feature(d: pd.DataFrame, cols: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {c: d[c].to_numpy() for c in cols if c in d}


def _tracks_layer(d: pd.DataFrame, place: dict[int, int], name: str,
                  kw: dict[str, Any]) -> LayerDataTuple | None:  # fmt: skip
    d = d[d["track_id"].notna() & (d["track_id"] >= 0)]
    if d.empty:
        return None
    t = d["frame"].map(place).to_numpy(float)
    data = np.stack([d["track_id"].to_numpy(float), t, d["y_px"].to_numpy(float),
                     d["x_px"].to_numpy(float)], axis=1)  # fmt: skip
    order = np.lexsort((data[:, 1], data[:, 0]))  # napari wants them by track, then time
    return data[order], {**kw, "name": name, "tail_length": 10}, "tracks"


def to_napari(run: Run | str | Path, *, series: str | None = None, frames: bool = True,
              loop_points: int = 48) -> list[LayerDataTuple]:  # fmt: skip
    """napari layer data of a run: Image, Shapes (centre lines, loops) and Tracks layers.

    Parameters
    ----------
    run : Run or path
        A run (:func:`loopline.open_run`) or its folder.
    series : str, optional
        Which series of a run with several (``loopline serve`` from a camera).
    frames : bool
        Make the ``frames`` Image layer (reads the input again).
    loop_points : int
        Points on each loop's ellipse.

    Returns
    -------
    list of (data, kwargs, layer_type)
        See the module docstring; empty layers are left out.

    Examples
    --------
    >>> layers = loopline.to_napari("runs/pileup-video")                 # doctest: +SKIP
    >>> [(kw["name"], kind) for _, kw, kind in layers]                   # doctest: +SKIP
    [('frames', 'image'), ('centre lines', 'shapes'), ('loops', 'shapes'),
     ('line tracks', 'tracks'), ('loop tracks', 'tracks')]
    >>> import napari                                                    # doctest: +SKIP
    >>> viewer = napari.Viewer()                                         # doctest: +SKIP
    >>> for data, kw, kind in layers:                                    # doctest: +SKIP
    ...     getattr(viewer, f"add_{kind}")(data, **kw)
    """
    run = _as_run(run)
    sid = pick_series(run, series)
    rows = run.series if sid is None else run.series[run.series["series"] == sid]
    frame_ids = sorted(int(f) for f in rows["frame"])
    place = {f: i for i, f in enumerate(frame_ids)}
    nm = run.nm_per_px
    scale = (1.0, nm or 1.0, nm or 1.0)
    meta = {"run": str(run.path), "series": sid, "nm_per_px": nm,
            "units": ("frame", "nm", "nm") if nm else ("frame", "px", "px"),
            "frames": frame_ids}  # fmt: skip
    kw = {"scale": scale, "metadata": meta}
    layers: list[LayerDataTuple] = []

    if frames:
        try:
            stack = run.frame_stack()
        except (FileNotFoundError, ValueError) as e:
            logger.warning("no frames layer: %s", e)
        else:
            layers.append((stack, {**kw, "name": "frames", "colormap": "gray"}, "image"))
    logger.info("no masks layer: a run folder keeps the measurements, not the masks")

    lines = run.lines(series=sid)
    lines = lines[lines["frame"].isin(place)]
    if not lines.empty:
        t = lines["frame"].map(place).to_numpy(float)
        paths = [np.column_stack([np.full(len(p), ti), p[:, 1], p[:, 0]])
                 for ti, p in zip(t, lines["points"], strict=True)]  # fmt: skip
        feats = _feature(lines, ("track_id", "pileup_id", "rank", "length_nm",
                                 "velocity_nm_per_s"))  # fmt: skip
        layers.append((paths, {**kw, "name": "centre lines", "shape_type": "path",
                               "edge_color": "yellow", "edge_width": 2.0,
                               "features": feats}, "shapes"))  # fmt: skip

    loops = run.loops(series=sid)
    loops = loops[loops["frame"].isin(place) & loops["major_px"].notna()]
    if not loops.empty:
        polys = []
        for r in loops.itertuples(index=False):
            p = ellipse_polygon(r.x_px, r.y_px, r.major_px, r.minor_px,
                                0.0 if np.isnan(r.angle_deg) else r.angle_deg, n=loop_points)
            polys.append(np.column_stack([np.full(len(p), float(place[int(r.frame)])),
                                          p[:, 1], p[:, 0]]))  # fmt: skip
        feats = _feature(loops, ("track_id", "major_nm", "minor_nm", "angle_deg",
                                 "growth_nm_per_s"))  # fmt: skip
        layers.append((polys, {**kw, "name": "loops", "shape_type": "polygon",
                               "edge_color": "cyan", "face_color": "transparent",
                               "edge_width": 1.5, "features": feats}, "shapes"))  # fmt: skip

    for kind, name in (("line", "line tracks"), ("loop", "loop tracks")):
        d = lines if kind == "line" else loops
        layer = _tracks_layer(d, place, name, kw)
        if layer is not None:
            layers.append(layer)
    return layers


# ------------------------------------------------------------------------ reader plugin
def is_run_folder(path: str | Path) -> bool:
    """A folder holding ``summary.json`` and ``series.csv`` (a loopline run)."""
    p = Path(path)
    return p.is_dir() and (p / "summary.json").is_file() and (p / "series.csv").is_file()


def read_run(path: str | Path | list) -> list[LayerDataTuple]:
    """napari reader: the layers of the run folder ``path`` (see :func:`to_napari`)."""
    p = Path(path[0] if isinstance(path, list) else path)
    if p.is_file():
        p = p.parent
    return to_napari(p)


def napari_get_reader(path: str | Path | list):
    """napari (npe2) reader contribution: :func:`read_run` for a run folder (or its
    ``summary.json`` / ``series.csv``), None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_file() and p.name in ("summary.json", "series.csv"):
        p = p.parent
    return read_run if is_run_folder(p) else None
