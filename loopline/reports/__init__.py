"""loopline.reports: figures and a summary table of a run folder (``loopline report RUN_DIR``)."""
