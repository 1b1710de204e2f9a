"""``privacy-pipeline``: one subcommand per stage. Wiring only.

Flags -> the stage's ``run(...)`` -> its one-line summary on stdout, its XCom
JSON at ``$XCOM_RETURN_PATH`` and its commit marker in the run. A
``StageError`` becomes one line on stderr and in ``/dev/termination-log``
(which Kubernetes shows in the pod status) and exit code 2, with no traceback.
Stage modules are imported only when their subcommand runs, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy_pipeline import storage, telemetry
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult, write_xcom

log = logging.getLogger(__name__)

TERMINATION_LOG = Path("/dev/termination-log")
EXIT_STAGE_ERROR = 2


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]


def _run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="URI", help="the run's prefix, e.g. gs://bucket/runs/<run_id>/")


def _synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="URI", help="file to write (.csv or .parquet)")
    parser.add_argument("--rows", type=int, default=5000, metavar="N")
    parser.add_argument("--seed", type=int, default=7, metavar="S")
    parser.add_argument("--format", choices=["csv", "parquet"], default=None, help="default: from --out's suffix")
    parser.add_argument(
        "--embedded", action="store_true", help="also featurize into 584-dim embeddings, the production form"
    )


def _ingest_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="URI", help="a CSV/Parquet file or a prefix of part files")
    _run_arg(parser)


def _tune_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    parser.add_argument("--shard", type=int, default=0, metavar="I", help="which share of the candidates (0-based)")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N", help="how many shares the search is cut into")


def _register_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    parser.add_argument("--registry", required=True, metavar="URI", help="the model registry prefix")


def _deploy_args(parser: argparse.ArgumentParser) -> None:
    _register_args(parser)
    parser.add_argument(
        "--all-traffic", action="store_true", help="the champion takes all traffic at once (after a rollback)"
    )


def _synth_conversations_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="URI", help="file to write (.jsonl or .parquet)")
    parser.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the day the conversations happened")
    parser.add_argument("--conversations", type=int, default=500, metavar="N")
    parser.add_argument("--seed", type=int, default=7, metavar="S")
    parser.add_argument(
        "--shift", type=float, default=0.0, metavar="F", help="share moved to other topics and languages (drift demo)"
    )


def _conversations_validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", required=True, metavar="URI", help="a day's partition, e.g. gs://bucket/raw/conversations/ds=..."
    )
    _run_arg(parser)
    parser.add_argument("--day", metavar="YYYY-MM-DD", help="default: the ds= of --source")


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", dest="store_uri", required=True, metavar="URI", help="the vector store prefix (holds latest.json)"
    )


def _conversations_store_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    _store_arg(parser)


def _drift_args(parser: argparse.ArgumentParser) -> None:
    _register_args(parser)
    _store_arg(parser)
    parser.add_argument(
        "--training-data",
        required=True,
        metavar="URI",
        help="where labelled ds= partitions live, e.g. gs://bucket/raw/privacy_intent/ (what a retrain would read)",
    )


def _search_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", dest="store_uri", required=True, metavar="URI", help="the vector store prefix")
    parser.add_argument("--query", required=True, metavar="TEXT")
    parser.add_argument("--k", type=int, default=10, metavar="N", help="how many conversations to return")
    parser.add_argument("--intent", metavar="NAME", help="only conversations the champion tagged with this intent")
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="only conversations of this day or later")
    parser.add_argument("--version", metavar="V", help="a store version (default: latest)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print JSON for machines")


def _rollback_args(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--registry", metavar="URI", help="the model registry prefix: roll back its champion")
    target.add_argument(
        "--store", dest="store_uri", metavar="URI", help="the vector store prefix: roll back its latest.json"
    )
    parser.add_argument(
        "--to", metavar="VERSION", help="a registered version (default: the champion the last promotion replaced)"
    )
    parser.add_argument("--by", metavar="WHO", help="who asks (default: $ROLLBACK_REQUESTED_BY, else the OS user)")
    parser.add_argument("--reason", metavar="TEXT", help="why, for the registry's history")


def _registry_view_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", choices=["list", "show", "history"], help="what to print")
    parser.add_argument("version", nargs="?", help="the version to show (show only)")
    parser.add_argument("--registry", required=True, metavar="URI", help="the model registry prefix")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print JSON for machines")


def _retention_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", dest="runs_uri", required=True, metavar="URI", help="the runs prefix, gs://b/runs/")
    parser.add_argument("--registry", required=True, metavar="URI", help="the model registry prefix")
    _store_arg(parser)
    parser.add_argument("--report", dest="report_uri", required=True, metavar="URI", help="where the report goes")
    parser.add_argument(
        "--dry-run",
        nargs="?",
        type=_true_or_false,
        const=True,
        default=False,
        metavar="true|false",
        help="report what would go, delete nothing (--dry-run=false: delete; the DAG passes its Param)",
    )


def _true_or_false(value: str) -> bool:
    if value.lower() not in {"true", "false"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, metavar="URI", help="the model registry prefix")
    parser.add_argument("--version", metavar="V", help="a registered model version (default: the champion)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, default=8080, metavar="P", help="HTTP port (V2, V1, /metrics, /try)")
    parser.add_argument("--grpc-port", type=int, metavar="P", help="also serve V2 over gRPC, on all interfaces")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, metavar="N", help="messages per micro-batch (1: batching off)"
    )
    parser.add_argument(
        "--max-batch-wait-ms", type=float, default=5.0, metavar="MS", help="longest a request waits for company"
    )


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "synth",
        "synth",
        "write a synthetic privacy-intent dataset",
        "Writes --out: user messages in six intents (privacy intents ~1:9 against no_privacy_intent) "
        "with paraphrases, typos and noise; deterministic for --seed. Columns: id, text, label "
        "(+ emb_000..emb_583 with --embedded).",
        _synth_args,
    ),
    Subcommand(
        "ingest",
        "ingest",
        "snapshot CSV/Parquet source data into the run",
        "Reads --source (one CSV/Parquet file or every part file under a prefix). Writes "
        "<run>/ingest/snapshot.parquet and records row counts, a content hash and the source "
        "objects with their GCS generations.",
        _ingest_args,
    ),
    Subcommand(
        "validate",
        "validate",
        "check schema, labels, embeddings and class sizes; quarantine bad rows",
        "Reads <run>/ingest/snapshot.parquet. Writes <run>/validate/validated.parquet, "
        "quarantine.parquet and report.json. Fails when bad rows exceed validate.max_bad_row_fraction "
        "or a class is too small for the split, CV folds and SMOTE.",
        _run_arg,
    ),
    Subcommand(
        "featurize",
        "featurize",
        "sentence embeddings + handcrafted text features",
        "Reads <run>/validate/validated.parquet. Writes <run>/featurize/features.parquet "
        "(384-dim all-MiniLM-L6-v2 embeddings and 25+ handcrafted features per text row, or the "
        "given 584-dim embeddings) and feature_spec.json.",
        _run_arg,
    ),
    Subcommand(
        "split",
        "split",
        "stratified train/holdout split",
        "Reads <run>/featurize/features.parquet. Writes <run>/split/train.parquet and holdout.parquet. "
        "The holdout is never resampled.",
        _run_arg,
    ),
    Subcommand(
        "tune",
        "tune",
        "cross-validated hyperparameter search over one shard of the candidates",
        "Reads <run>/split/train.parquet. Writes <run>/tune/shard-I-of-N.json with every candidate's "
        "CV scores. SMOTE is fitted inside training folds only.",
        _tune_args,
    ),
    Subcommand(
        "select",
        "select",
        "pick the best candidate across all tune shards",
        "Reads every <run>/tune/shard-*.json; refuses if a shard is missing. Writes <run>/select/best.json.",
        _run_arg,
    ),
    Subcommand(
        "train",
        "train",
        "fit the best candidate on the whole training split",
        "Reads <run>/select/best.json and <run>/split/train.parquet. Writes <run>/train/model.skops "
        "(featurizer + classifier in one pipeline).",
        _run_arg,
    ),
    Subcommand(
        "evaluate",
        "evaluate",
        "score the model on the untouched holdout",
        "Reads <run>/train/model.skops and <run>/split/holdout.parquet. Writes <run>/evaluate/metrics.json "
        "(macro and per-class F1, accuracy, ROC-AUC, confusion matrix, majority baseline) and PNG plots.",
        _run_arg,
    ),
    Subcommand(
        "register",
        "register",
        "version the model in the registry and apply the promotion gate",
        "Reads the run's model, metrics and holdout. Writes <registry>/models/<version>/ (model, metadata), "
        "<registry>/runs/<version>.json, and moves <registry>/champion.json when the paired bootstrap interval "
        "of the candidate's macro-F1 lead over the champion, on holdout rows the champion never trained on, "
        "lies above register.promotion_margin (no usable champion: over the majority-class baseline by "
        "register.baseline_margin).",
        _register_args,
    ),
    Subcommand(
        "deploy",
        "deploy",
        "roll the champion out as a KServe InferenceService, as a canary after a promotion",
        "Reads <run>/register/_result.json and the registry's champion. Writes <run>/deploy/inferenceservice.yaml: "
        "the champion's InferenceService (Knative mode) taking rollout.canary_traffic_percent of traffic beside the "
        "previous version, or all of it with --all-traffic; applies it when rollout.kubernetes_apply is on. "
        "Nothing to roll out when register did not promote.",
        _deploy_args,
    ),
    Subcommand(
        "canary-check",
        "canary_check",
        "judge the canary against the previous version; promote it to all traffic or roll it back",
        "Compares error rate, p99 latency and prediction agreement of the canary and the previous version: from "
        "Prometheus over rollout.window_seconds (rollout.prometheus_url), else by replaying the run's holdout "
        "texts to both as local servers. Promotes (writes <run>/canary_check/inferenceservice.yaml with all "
        "traffic) or rolls the registry's champion back to the previous version, saying why.",
        _register_args,
    ),
    Subcommand(
        "rollback",
        "rollback",
        "move the registry's champion back to an earlier registered version",
        "Moves <registry>/champion.json by compare-and-swap to --to VERSION (default: the champion the last "
        "promotion replaced) and records who, when and why in <registry>/history/. The version already champion, "
        "or a default rollback right after another, is a no-op; an unregistered version is refused.",
        _rollback_args,
    ),
    Subcommand(
        "registry",
        "registry_view",
        "print the registry: list | show VERSION | history",
        "list: every version with its macro-F1, gate difference, interval and decision; show VERSION: its run "
        "record and lineage; history: every champion move with who, when and why. --json for machines.",
        _registry_view_args,
    ),
    Subcommand(
        "synth-conversations",
        "synth_conversations",
        "write a day of synthetic support conversations",
        "Writes --out (.jsonl or .parquet): user/agent conversations of --day, ~15% carrying privacy requests, "
        "with fake emails, phone numbers, card numbers and IPs; deterministic for --seed and --day.",
        _synth_conversations_args,
    ),
    Subcommand(
        "conversations-validate",
        "conversations_validate",
        "check a day's conversations; quarantine bad ones",
        "Reads the JSONL/Parquet parts under --source. Writes <run>/conversations/validate/conversations.parquet "
        "(an index of the valid conversations, no text), quarantine.parquet and report.json. Fails when bad "
        "conversations exceed conversations.max_bad_fraction.",
        _conversations_validate_args,
    ),
    Subcommand(
        "conversations-redact",
        "conversations_redact",
        "replace emails, phone numbers, card numbers and IPs in the validated conversations",
        "Re-reads the validated source parts. Writes <run>/conversations/redact/conversations.parquet, the only "
        "conversation text the job stores.",
        _run_arg,
    ),
    Subcommand(
        "conversations-embed",
        "conversations_embed",
        "embed each conversation's redacted user turns with all-MiniLM-L6-v2",
        "Reads <run>/conversations/redact/. Writes <run>/conversations/embed/embeddings.parquet.",
        _run_arg,
    ),
    Subcommand(
        "conversations-tag",
        "conversations_tag",
        "tag each conversation with the champion privacy-intent model",
        "Reads <run>/conversations/redact/ and the champion from --registry. Writes "
        "<run>/conversations/tag/tags.parquet, or skips with a note when there is no usable champion.",
        _register_args,
    ),
    Subcommand(
        "conversations-upsert",
        "conversations_upsert",
        "merge the day into the store's latest vectors as a candidate",
        "Reads the run's embeddings and tags and the store's latest version. Writes the candidate (vectors.npy, "
        "metadata.parquet, candidate.json) under <run>/conversations/upsert/; a day already in the store is replaced.",
        _conversations_store_args,
    ),
    Subcommand(
        "conversations-publish",
        "conversations_publish",
        "build the index, check recall@10, publish a new store version",
        "Reads the run's candidate. Writes <store>/versions/<version>/ (index.faiss, vectors.npy, metadata.parquet, "
        "manifest.json) and then moves <store>/latest.json; refuses below conversations.min_recall_at_10.",
        _conversations_store_args,
    ),
    Subcommand(
        "conversations-drift",
        "drift",
        "compare the day with recent days and the champion's training data; say whether to retrain",
        "Reads the run's redacted text, embeddings and tags, the store's recent days and the champion's training "
        "split. Writes <run>/conversations/drift/report.json and report.html (plots inline). drifted when the "
        "domain classifier's ROC AUC against recent days is above drift.auc_threshold; the XCom then names the "
        "training run to trigger (drift__<day>__<content hash>) and the labelled partition it reads.",
        _drift_args,
    ),
    Subcommand(
        "retention",
        "retention",
        "delete old run prefixes, model versions and vector-store versions nothing kept refers to",
        "Keeps the newest retention.keep_model_versions model versions and every version ever champion, the newest "
        "retention.keep_store_versions store versions and latest, and every run prefix newer than "
        "retention.run_max_age_days or named by something kept; deletes the rest (--dry-run: nothing) and writes "
        "what went, with reasons and sizes, to --report.",
        _retention_args,
    ),
    Subcommand(
        "search",
        "search",
        "find stored conversations similar to a query",
        "Prints the --k most similar conversations of the store's latest version (or --version): ids, scores, "
        "days, intents and redacted snippets; --json for machines.",
        _search_args,
    ),
    Subcommand(
        "serve",
        "privacy_pipeline.serving.server",
        "serve the champion over KServe's Open Inference Protocol, with a try-it page",
        "Loads --version (default: the registry's champion) and serves it until stopped: V2 REST at "
        "/v2/models/privacy-intent/infer (a BYTES input 'text' of shape [n]), V1, /metrics, the page at /try. "
        "A missing, corrupt or untrusted version fails before anything listens. Needs the serving environment.",
        _serve_args,
    ),
)


def build_parser(subcommands: Sequence[Subcommand] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privacy-pipeline",
        description="Stages of the privacy-intent training pipeline. Each reads and writes under a run URI "
        "(local path, file:// or gs://) and writes its XCom JSON to $XCOM_RETURN_PATH.",
    )
    parser.add_argument("--config", metavar="FILE", help="pipeline config YAML (unknown keys are errors)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set tune.search=random (repeatable)",
    )
    parser.add_argument("--log-level", default=os.environ.get("PIPELINE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for sub in subcommands:
        sub_parser = commands.add_parser(sub.name, help=sub.help, description=sub.description)
        sub.add_arguments(sub_parser)
    return parser


def _stage_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    global_flags = {"command", "config", "overrides", "log_level"}
    renamed = {"run": "run_uri", "registry": "registry_uri", "format": "fmt"}
    return {renamed.get(k, k): v for k, v in vars(args).items() if k not in global_flags}


def _report_failure(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    # The kubelet provides this file in a pod; elsewhere there is none to write.
    if TERMINATION_LOG.exists():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(message[:4000], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    subcommand = next(s for s in SUBCOMMANDS if s.name == args.command)
    try:
        from privacy_pipeline.config import load_config

        config = load_config(args.config, args.overrides)
        # A dotted module lives outside stages/ (the model server).
        module = subcommand.module if "." in subcommand.module else f"privacy_pipeline.stages.{subcommand.module}"
        stage = importlib.import_module(module)
        # Pushes the stage's figures (or its failure) to the Pushgateway once it has ended.
        with telemetry.stage_telemetry(subcommand.name) as outcome:
            result: StageResult = stage.run(config=config, **_stage_kwargs(args))
            write_xcom(result)
            if result.commit_uri:
                storage.write_json(result.commit_uri, result.payload())
            outcome.result = result
    except StageError as exc:
        _report_failure(str(exc))
        return EXIT_STAGE_ERROR
    except Exception as exc:
        _report_failure(f"{args.command}: unexpected {type(exc).__name__}: {exc}")
        raise
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
