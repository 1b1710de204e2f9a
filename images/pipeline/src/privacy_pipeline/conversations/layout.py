"""Where the conversations stages write inside a run prefix.

Everything lives under ``<run>/conversations/<step>/`` so the job never
collides with the training stages' folders, and each step's commit marker is
``RunLayout.result("conversations/<step>")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy_pipeline.run_layout import RunLayout

VALIDATE = "conversations/validate"
REDACT = "conversations/redact"
EMBED = "conversations/embed"
TAG = "conversations/tag"
UPSERT = "conversations/upsert"
PUBLISH = "conversations/publish"


@dataclass(frozen=True)
class ConversationsLayout:
    run_uri: str

    @property
    def run(self) -> RunLayout:
        return RunLayout(self.run_uri)

    def result(self, step: str) -> str:
        return self.run.result(step)

    def require(self, step: str, needed_by: str) -> dict:
        return self.run.require(step, needed_by=needed_by)

    # validate: an index of the valid conversations, never their text
    @property
    def validated(self) -> str:
        return self.run.path(VALIDATE, "conversations.parquet")

    @property
    def quarantine(self) -> str:
        return self.run.path(VALIDATE, "quarantine.parquet")

    @property
    def validation_report(self) -> str:
        return self.run.path(VALIDATE, "report.json")

    # redact
    @property
    def redacted(self) -> str:
        return self.run.path(REDACT, "conversations.parquet")

    # embed
    @property
    def embeddings(self) -> str:
        return self.run.path(EMBED, "embeddings.parquet")

    # tag
    @property
    def tags(self) -> str:
        return self.run.path(TAG, "tags.parquet")

    # upsert: the candidate store content publish turns into a version
    @property
    def candidate_vectors(self) -> str:
        return self.run.path(UPSERT, "vectors.npy")

    @property
    def candidate_metadata(self) -> str:
        return self.run.path(UPSERT, "metadata.parquet")

    @property
    def candidate_manifest(self) -> str:
        return self.run.path(UPSERT, "candidate.json")
