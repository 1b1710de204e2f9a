"""``make bench``: the pipeline's speed and memory measured against baselines, side by side in one run."""
