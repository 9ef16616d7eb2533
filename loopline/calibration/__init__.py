"""loopline.calibration."""
