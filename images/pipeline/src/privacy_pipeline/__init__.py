"""Privacy-intent pipeline stages: ingest, validate, featurize, split, tune, select, train, evaluate, register."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("privacy-intent-pipeline")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
