"""loopline.engines."""
