"""loopline.calibration: pixel size, frame times, dose and foil thickness of an acquisition."""

from .profile import (
    Calibration,
    CalibrationError,
    calibration_from_dict,
    calibration_from_truth,
    check_frame_times,
    frame_time_s,
    frame_times_from_names,
    load_calibration,
    pixel_size_from_file,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "calibration_from_dict",
    "calibration_from_truth",
    "check_frame_times",
    "frame_time_s",
    "frame_times_from_names",
    "load_calibration",
    "pixel_size_from_file",
]
