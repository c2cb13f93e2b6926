"""Cold-start calibration: good frames in; a bank version with its threshold out (edge-calibrate)."""
