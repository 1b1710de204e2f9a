"""The pipeline's configuration: one typed model, defaults in code, validated once.

Overrides come from a YAML file (``--config``) and from ``--set dotted.key=value``
flags (what DAG Params turn into). An unknown key anywhere is an error that
names the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from privacy_pipeline.errors import StageError

INTENTS: tuple[str, ...] = (
    "data_deletion",
    "data_access",
    "opt_out",
    "consent_withdrawal",
    "privacy_policy_question",
    "no_privacy_intent",
)

SENTENCE_EMBEDDING_DIM = 384
TFIDF_SVD_DIM = 200
# 384 sentence-transformer dimensions + 200 TF-IDF/SVD dimensions: the form
# production training data arrives in.
EMBEDDING_DIM = SENTENCE_EMBEDDING_DIM + TFIDF_SVD_DIM


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Section):
    # A part file beyond this is refused rather than loaded into a pod's memory.
    max_source_bytes: int = Field(default=2 * 1024**3, gt=0)


class ValidateConfig(_Section):
    embedding_dim: int = Field(default=EMBEDDING_DIM, gt=0)
    max_text_chars: int = Field(default=5_000, gt=0)
    # Bad rows up to this share of the input are quarantined and reported;
    # above it the run fails.
    max_bad_row_fraction: float = Field(default=0.02, ge=0.0, le=1.0)
    min_rows: int = Field(default=50, gt=0)


class FeaturizeConfig(_Section):
    model_name: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(default=64, gt=0)
    device: str = "cpu"
    tfidf_max_features: int = Field(default=20_000, gt=0)
    tfidf_svd_dim: int = Field(default=TFIDF_SVD_DIM, gt=0)


class SplitConfig(_Section):
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)


class SmoteConfig(_Section):
    enabled: bool = True
    k_neighbors: int = Field(default=5, gt=0)


class TuneConfig(_Section):
    search: Literal["grid", "random"] = "grid"
    # Random search draws this many candidates; grid search ignores it.
    n_trials: int = Field(default=12, gt=0)
    cv_folds: int = Field(default=5, ge=2)
    c_grid: list[float] = Field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    # Random search samples C log-uniformly between these.
    c_min: float = Field(default=1e-4, gt=0)
    c_max: float = Field(default=100.0, gt=0)
    # 0.0 is pure L2 (lbfgs); anything above needs the saga solver, much slower.
    l1_ratios: list[float] = Field(default_factory=lambda: [0.0])
    # lbfgs stops at max_iter or when the largest gradient entry is below tol (scikit-learn's default, also
    # LogisticRegressionCV's in the bench). At 50k rows the warm-started fits take ~20 iterations, far from
    # max_iter, and a looser tol saves solver time but moves the fold scores: at 3e-4 by up to 0.002, at 1e-3 by
    # up to 0.005, more than the whole spread of one fold's scores over c_grid (0.005), so it changes the winner.
    max_iter: int = Field(default=300, gt=0)
    tol: float = Field(default=1e-4, gt=0)
    # BLAS threads for the classifier fits (search and final fit). lbfgs on a
    # few thousand weights makes many tiny BLAS calls that extra threads only
    # slow down, and OpenBLAS sizes its pool by the node's cores, not the
    # pod's CPU limit: measured 23x slower with the default pool on a busy
    # 2-core machine.
    blas_threads: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _check_ranges(self) -> TuneConfig:
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ValueError("c_grid must list positive C values")
        if self.c_min >= self.c_max:
            raise ValueError("c_min must be below c_max")
        if not self.l1_ratios or any(not 0.0 <= r <= 1.0 for r in self.l1_ratios):
            raise ValueError("l1_ratios must be values in [0, 1]")
        return self


class TrainConfig(_Section):
    # Apply SMOTE to the whole training split before the final fit, as in tuning.
    smote: bool = True


class RegisterConfig(_Section):
    # The lower bound of the paired bootstrap interval of (candidate - champion)
    # holdout macro-F1 must be above this.
    promotion_margin: float = Field(default=0.005, ge=0.0)
    # Without a usable champion, the same test against "always the commonest
    # training class": a first model must beat it by at least this much.
    baseline_margin: float = Field(default=0.05, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_resamples: int = Field(default=2000, ge=100)
    # Fewer holdout rows than this left once the champion's training rows are
    # excluded: no comparison, no promotion.
    min_comparable_rows: int = Field(default=30, gt=0)
    promote: bool = True
    image_tag: str = "local"


class RolloutConfig(_Section):
    """deploy and canary_check: the canary's share of traffic, the window it is judged over, and the thresholds."""

    # The new version's share of traffic while it is a canary (KServe's canaryTrafficPercent).
    canary_traffic_percent: int = Field(default=10, ge=1, le=99)
    # In the cluster: how long the canary takes traffic before it is judged, and the Prometheus range.
    window_seconds: int = Field(default=600, gt=0)
    # Empty: the embedded default's shadow comparison on two local servers; else the serving metrics' Prometheus.
    prometheus_url: str = ""
    # The label Prometheus gives each serving pod's series from its privacy-intent/model-version pod label.
    prometheus_version_label: str = "model_version"
    # The canary is rolled back when its error rate exceeds the previous version's by more than this, ...
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    # ... its p99 latency exceeds both the previous version's times this ratio and plus this slack
    # (the slack keeps a few milliseconds of scheduler noise on a fast p99 from deciding), ...
    max_p99_ratio: float = Field(default=2.0, ge=1.0)
    p99_slack_seconds: float = Field(default=0.25, ge=0.0)
    # ... fewer of the same messages get the same intent from both than this share (in the cluster, where the two
    # see different requests, the overlap of their predicted-intent distributions), ...
    min_agreement: float = Field(default=0.8, ge=0.0, le=1.0)
    # ... or it answered fewer requests than this: not enough evidence to give it all traffic.
    min_requests: int = Field(default=50, gt=0)
    # Holdout texts the shadow comparison replays to both servers, one request each.
    shadow_texts: int = Field(default=200, gt=0)
    server_ready_timeout_seconds: float = Field(default=300.0, gt=0)
    # Apply the rendered InferenceService with the Kubernetes API (server-side apply, in-cluster credentials).
    # Off on the embedded default, which has no cluster: the manifests are written to the run only.
    kubernetes_apply: bool = False


class ConversationsConfig(_Section):
    """The daily conversations job: validation limits, snippets, index choice and the recall gate."""

    # A conversation with more messages or characters than this is quarantined
    # as oversized rather than embedded (the encoder truncates long input anyway).
    max_messages: int = Field(default=200, gt=0)
    max_conversation_chars: int = Field(default=20_000, gt=0)
    # Bad conversations up to this share of the day are quarantined; above it
    # the day fails (a broken export, not a few bad records).
    max_bad_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # Characters of the redacted user text kept as the searchable snippet.
    snippet_chars: int = Field(default=240, gt=0)
    # Below this many vectors an exact IndexFlatIP; from it on HNSW.
    flat_max_vectors: int = Field(default=100_000, ge=0)
    hnsw_m: int = Field(default=32, ge=2)
    hnsw_ef_construction: int = Field(default=80, gt=0)
    # publish picks the smallest efSearch up to this whose recall@10 reaches min_recall_at_10
    # (vector_store.build_tuned_index).
    hnsw_max_ef_search: int = Field(default=512, gt=0)
    # The recall@10 against exact search that publish tunes efSearch for, on held-out vectors of the store
    # that are not in the index when measured, and below which it refuses to publish.
    min_recall_at_10: float = Field(default=0.98, ge=0.0)
    # How many of the store's vectors are held out as those queries (at most a fifth of the store).
    recall_sample: int = Field(default=1_000, gt=0)
    # search retrieves k * this many candidates before applying --intent/--since.
    search_overfetch: int = Field(default=10, ge=1)


class RetentionConfig(_Section):
    """The retention stage: what it may delete from the bucket (README, "Retention")."""

    # A run prefix (runs/<run_id>/, runs/conversations/<run_id>/) whose newest object is older than this goes,
    # unless a kept model version or store version, or the champion's history, names the run.
    run_max_age_days: float = Field(default=30.0, gt=0.0)
    # Registered model versions kept: the newest this many, plus every version that was ever champion.
    keep_model_versions: int = Field(default=10, ge=1)
    # Vector-store versions kept: the newest this many, plus the one latest.json points at.
    keep_store_versions: int = Field(default=7, ge=1)


class DriftConfig(_Section):
    """conversations-drift: how the day is compared with recent days and the champion's training data."""

    # A cross-validated classifier telling the day's rows from recent days' rows: drift when its ROC AUC is
    # above this (Evidently's default for embedding drift; 0.5 is indistinguishable).
    auc_threshold: float = Field(default=0.55, gt=0.5, lt=1.0)
    # A single feature moved when its Population Stability Index is above this (0.25: "major shift", the
    # usual reading of PSI) and its KS test's p-value below ks_alpha.
    psi_threshold: float = Field(default=0.25, gt=0.0)
    ks_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    # The predicted-intent mix moved when the chi-square test against the reference's mix has a p-value
    # below this.
    intent_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    # The store's conversations of this many days before the day are what "nothing changed" looks like.
    reference_days: int = Field(default=7, ge=1)
    # Rows drawn from each side (more only cost time; the tests are already sensitive at a few hundred).
    sample_size: int = Field(default=1_000, ge=50)
    # Principal components of the sentence embeddings, fitted on the reference side, tested one by one.
    embedding_components: int = Field(default=5, ge=1, le=50)
    cv_folds: int = Field(default=5, ge=2)
    # Features named in the report as having moved most.
    top_features: int = Field(default=5, ge=1)
    seed: int = 42


class PipelineConfig(_Section):
    seed: int = 42
    labels: list[str] = Field(default_factory=lambda: list(INTENTS))
    negative_label: str = "no_privacy_intent"
    ingest: IngestConfig = IngestConfig()
    # `validate` and `register` are also names on pydantic's BaseModel, hence the trailing _ in Python;
    # YAML files and --set use the plain names.
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    featurize: FeaturizeConfig = FeaturizeConfig()
    split: SplitConfig = SplitConfig()
    smote: SmoteConfig = SmoteConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    rollout: RolloutConfig = RolloutConfig()
    conversations: ConversationsConfig = ConversationsConfig()
    drift: DriftConfig = DriftConfig()
    retention: RetentionConfig = RetentionConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # sha256 of the --config file's bytes (set by load_config): the content hash the data watch compares
    # with the last training run's to start a run when the cluster's config changes.
    _source_sha256: str | None = PrivateAttr(default=None)

    @property
    def source_sha256(self) -> str | None:
        return self._source_sha256

    @model_validator(mode="after")
    def _check_labels(self) -> PipelineConfig:
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError("labels must be at least two distinct names")
        if self.negative_label not in self.labels:
            raise ValueError(f"negative_label {self.negative_label!r} is not one of labels")
        return self

    @property
    def min_rows_per_class(self) -> int:
        """Rows a class needs so that the split, stratified CV and SMOTE all work.

        The holdout takes ``holdout_fraction`` of each class; each CV training
        fold keeps (folds - 1) / folds of the rest; SMOTE needs k_neighbors + 1
        rows of a class inside every training fold.
        """
        needed_in_train = self.min_train_rows_per_class
        return max(needed_in_train + 1, math.ceil(needed_in_train / (1.0 - self.split.holdout_fraction)))

    @property
    def min_train_rows_per_class(self) -> int:
        """Training rows a class needs so that every stratified CV training fold has k_neighbors + 1 for SMOTE."""
        folds = self.tune.cv_folds
        needed_in_fold = self.smote.k_neighbors + 1 if self.smote.enabled else 1
        return max(folds, math.ceil(needed_in_fold * folds / (folds - 1)))


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise StageError(f"config: --set {dotted_key}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(assignment: str) -> tuple[str, Any]:
    """``tune.search=random`` -> ("tune.search", "random"); the value is read as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise StageError(f"config: --set expects KEY=VALUE, got {assignment!r}")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    tree: dict[str, Any] = {}
    source_sha256 = None
    if path:
        config_path = Path(path)
        try:
            content = config_path.read_bytes()
            source_sha256 = hashlib.sha256(content).hexdigest()
            loaded = yaml.safe_load(content.decode("utf-8"))
        except FileNotFoundError as exc:
            raise StageError(f"config: {path} does not exist") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise StageError(f"config: {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise StageError(f"config: {path} must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
    for assignment in overrides or []:
        key, value = parse_override(assignment)
        _set_dotted(tree, key, value)
    try:
        config = PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        source = path or "defaults"
        raise StageError(f"config: {source}: {problems}") from exc
    config._source_sha256 = source_sha256
    return config


def config_as_dict(config: PipelineConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True)


def config_sha256(config: PipelineConfig) -> str:
    """sha256 of the effective config (file, overrides and defaults) as canonical JSON: equal configs, equal hashes."""
    canonical = json.dumps(config_as_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
