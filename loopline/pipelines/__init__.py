"""loopline.pipelines: masks → lines and loops → tracks → spacing, velocity, growth.

Per frame, :func:`measure_frame` turns an engine's :class:`~loopline.engines.base.Detections`
into a :class:`FrameResult`; across frames, :class:`OnlineTracker` links them and corrects
drift, and :class:`SeriesWriter` writes ``series.csv``, ``tracks.csv`` and ``summary.json``.
"""

from .container import FrameResult
from .lines import LineTrace, mean_closest_distance, trace_line
from .loops import LoopFit, fit_loop
from .measure import MeasureOptions, measure_frame
from .pileups import PileupGroups, group_pileups
from .series import SeriesAccumulator, SeriesWriter
from .tracking import OnlineTracker, phase_drift

__all__ = [
    "FrameResult",
    "LineTrace",
    "LoopFit",
    "MeasureOptions",
    "OnlineTracker",
    "PileupGroups",
    "SeriesAccumulator",
    "SeriesWriter",
    "fit_loop",
    "group_pileups",
    "mean_closest_distance",
    "measure_frame",
    "phase_drift",
    "trace_line",
]
