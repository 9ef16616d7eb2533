"""loopline.training."""
