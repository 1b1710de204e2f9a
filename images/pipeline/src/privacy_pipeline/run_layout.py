"""Where each stage's outputs live inside a run prefix.

The run prefix (``--run``) is the run's own partition: every stage reads what
earlier stages wrote here and writes its own outputs here, so a rerun replaces
rather than duplicates. Each stage writes ``<stage>/_result.json`` last; it is
the stage's commit marker, and a later stage refuses to start without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy_pipeline import storage
from privacy_pipeline.errors import StageError

RESULT_NAME = "_result.json"


@dataclass(frozen=True)
class RunLayout:
    run_uri: str

    def path(self, *parts: str) -> str:
        return storage.join(self.run_uri, *parts)

    def result(self, stage: str) -> str:
        return self.path(stage, RESULT_NAME)

    # ingest
    @property
    def snapshot(self) -> str:
        return self.path("ingest", "snapshot.parquet")

    @property
    def ingest_manifest(self) -> str:
        return self.path("ingest", "manifest.json")

    # validate
    @property
    def validated(self) -> str:
        return self.path("validate", "validated.parquet")

    @property
    def quarantine(self) -> str:
        return self.path("validate", "quarantine.parquet")

    @property
    def validation_report(self) -> str:
        return self.path("validate", "report.json")

    # featurize
    @property
    def features(self) -> str:
        return self.path("featurize", "features.parquet")

    @property
    def feature_spec(self) -> str:
        return self.path("featurize", "feature_spec.json")

    # split
    @property
    def train_split(self) -> str:
        return self.path("split", "train.parquet")

    @property
    def holdout_split(self) -> str:
        return self.path("split", "holdout.parquet")

    # tune / select
    def tune_shard(self, shard: int, num_shards: int) -> str:
        return self.path("tune", f"shard-{shard:04d}-of-{num_shards:04d}.json")

    @property
    def tune_dir(self) -> str:
        return self.path("tune")

    @property
    def best_candidate(self) -> str:
        return self.path("select", "best.json")

    # train
    @property
    def model(self) -> str:
        return self.path("train", "model.skops")

    # evaluate
    @property
    def metrics(self) -> str:
        return self.path("evaluate", "metrics.json")

    def plot(self, name: str) -> str:
        return self.path("evaluate", f"{name}.png")

    def require(self, stage: str, needed_by: str) -> dict:
        """The earlier stage's result, or a clear error that it has not completed in this run."""
        uri = self.result(stage)
        if not storage.exists(uri):
            raise StageError(
                f"{needed_by}: run {self.run_uri} has no completed {stage} stage ({uri} is missing); run {stage} first"
            )
        payload = storage.read_json(uri)
        if not isinstance(payload, dict):
            raise StageError(f"{needed_by}: {uri} is not a stage result object")
        return payload
