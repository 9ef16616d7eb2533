"""loopline.pipelines."""
