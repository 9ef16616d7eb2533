"""loopline.analysis: masks → lines and loops → tracks → spacing, velocity, growth.

Per frame, :func:`measure_frame` turns an engine's :class:`~loopline.engines.base.Detections`
into a :class:`FrameResult`; across frames, :class:`OnlineTracker` links them and corrects
drift, :class:`SeriesAccumulator` turns them into the rows of the run folder's tables
(:mod:`loopline.io.runfolder`) and :class:`SeriesWriter` writes them (``loopline analyze``; the
daemon's recorder writes the same rows with the same writer).
"""

from .container import FrameResult
from .lines import LineTrace, mean_closest_distance, trace_line
from .loops import LoopFit, box_loop, fit_loop
from .measure import BoxOnly, MeasureOptions, measure_frame
from .pileups import PileupGroups, group_pileups
from .series import SeriesAccumulator, SeriesWriter
from .tracking import OnlineTracker, phase_drift

__all__ = [
    "BoxOnly",
    "FrameResult",
    "LineTrace",
    "LoopFit",
    "MeasureOptions",
    "OnlineTracker",
    "PileupGroups",
    "SeriesAccumulator",
    "SeriesWriter",
    "box_loop",
    "fit_loop",
    "group_pileups",
    "mean_closest_distance",
    "measure_frame",
    "phase_drift",
    "trace_line",
]
