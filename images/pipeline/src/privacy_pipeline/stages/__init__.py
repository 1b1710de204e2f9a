"""One module per pipeline stage, each exposing ``run(...) -> StageResult``."""
