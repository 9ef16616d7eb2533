"""loopline.daemon."""
