"""``make demo``: one run of the real training DAG on the embedded default, then what a user wants to see.

Writes synthetic messages into the bucket's partition for today, runs
``airflow dags test privacy_intent_training`` (every stage from its rendered
pod spec, by the local pod runtime) and prints each stage's XCom, the holdout
metrics against the majority baseline, the model version and the promotion
decision. State lives in ``.local/``, so a second demo is judged against the
first demo's champion.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from embedded.mlflow_server import mlflow_server
from embedded.monitoring import run_figures, running_monitoring
from embedded.serve import DEFAULT_PORT, try_it_lines
from embedded.stack import BUCKET, REPO, embedded_stack

DAG_ID = "privacy_intent_training"


STAGE_LINES = {
    "ingest": lambda x: f"{x['rows']} rows from {x['parts']} part(s), sha256 {x['content_sha256'][:12]}",
    "validate": lambda x: (
        f"{x['rows_valid']} valid, {x['rows_quarantined']} quarantined; {x['exact_duplicate_rows']} exact and "
        f"{x['near_duplicate_rows']} near-duplicate texts"
    ),
    "featurize": lambda x: (
        f"{x['rows']} rows x {x['n_features']} features ({x['mode']} mode, {x.get('texts_per_second', 0):.0f} texts/s)"
    ),
    "split": lambda x: (
        f"{x['train_rows']} train / {x['holdout_rows']} holdout ({x['held_out_phrasing_rows']} of held-out "
        "phrasings; copies of a text kept on one side)"
    ),
    "tune": lambda x: (
        f"shard {x['shard']}/{x['num_shards']}: {x['candidates']} candidates, best CV macro-F1 {x['best_score']:.3f}"
    ),
    "select_best": lambda x: (
        f"{x['best_candidate_id']} {x['best_params']} (CV macro-F1 {x['cv_f1_macro']:.3f} "
        f"over {x['n_candidates']} candidates)"
    ),
    "train": lambda x: f"{x['train_rows']} rows ({x['resampled_rows']} after SMOTE) in {x['fit_seconds']:.1f}s",
    "evaluate": lambda x: (
        f"holdout macro-F1 {x['f1_macro']:.3f}, accuracy {x['accuracy']:.3f}, ROC-AUC {x['roc_auc_ovr']:.3f}"
    ),
    "register": lambda x: f"version {x['model_version']}, promoted={x['promoted']} ({x['decision_reason']})",
    "deploy": lambda x: x["reason"],
    "canary_check": lambda x: x["reason"] if not x["checked"] else f"{x['decision']}: {x['reason']}",
}


def print_report(xcoms: dict[str, list], run_id: str, seconds: float) -> None:
    print(f"\nprivacy_intent_training run {run_id}: success in {seconds:.0f}s\n")
    for task_id, describe in STAGE_LINES.items():
        for map_index, value in sorted(xcoms.get(task_id, []), key=lambda item: item[0]):
            label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
            try:
                line = describe(value)
            except (KeyError, TypeError, ValueError):
                line = json.dumps(value)[:160]
            print(f"  {label:<14} {line}")
    evaluate = xcoms.get("evaluate", [[-1, {}]])[0][1]
    register = xcoms.get("register", [[-1, {}]])[0][1]
    print("\nHoldout (never resampled, never seen in tuning, no text of it in training):")
    if evaluate.get("f1_macro_unseen") is not None:
        print(
            f"  macro-F1, unseen phrasings  {evaluate['f1_macro_unseen']:.3f}  (majority "
            f"{evaluate['baseline_f1_macro_unseen']:.3f}; {evaluate['n_holdout_unseen']} rows of phrasing families "
            "never in training: the headline)"
        )
    else:
        print(f"  macro-F1, unseen phrasings  n/a ({evaluate.get('phrasing_note') or 'no held-out phrasing rows'})")
    if evaluate.get("f1_macro_seen") is not None:
        print(
            f"  macro-F1, seen phrasings    {evaluate['f1_macro_seen']:.3f}  (majority "
            f"{evaluate['baseline_f1_macro_seen']:.3f}; {evaluate['n_holdout_seen']} rows, other texts of trained "
            "families)"
        )
    print(f"  macro-F1, whole holdout     {evaluate.get('f1_macro', float('nan')):.3f}")
    majority = evaluate.get("baseline_f1_macro", float("nan"))
    print(f"  majority                    {majority:.3f}  (always the commonest class)")
    print(f"  accuracy                    {evaluate.get('accuracy', float('nan')):.3f}")
    print(f"  ROC-AUC (OvR)               {evaluate.get('roc_auc_ovr', float('nan')):.3f}")
    print("\nRegistry:")
    print(f"  model version {register.get('model_version')}")
    verdict = "PROMOTED to champion" if register.get("promoted") else "not promoted"
    print(f"  decision      {verdict}: {register.get('decision_reason')}")
    print(f"  champion      {register.get('champion_version')}")
    print(f"  model         {register.get('model_uri')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".local", help="where the embedded state lives")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    now = datetime.now(UTC).replace(microsecond=0)
    ds = now.date().isoformat()
    log_file = args.home / f"demo-{now:%Y%m%dT%H%M%SZ}.log"
    started = time.monotonic()
    # Each stage pushes its figures to a local Pushgateway, which a local Prometheus scrapes (history kept in .local).
    # register mirrors the run to a real MLflow server on 127.0.0.1 (state in .local/mlflow, kept across demos).
    with (
        running_monitoring(args.home / "monitoring") as monitoring,
        mlflow_server(args.home / "mlflow") as tracking,
        embedded_stack(
            args.home, extra_env={"PIPELINE_PUSHGATEWAY_URL": monitoring.pushgateway_url, **tracking.env}
        ) as stack,
    ):
        print(
            f"Embedded default: Airflow home {stack.home / 'airflow'}, GCS emulator {stack.emulator_host}, "
            f"stage pods run by the {stack.env['PIPELINE_POD_RUNTIME']} runtime"
        )
        stack.airflow("db", "migrate", log_file=log_file)
        partition = f"gs://{BUCKET}/raw/privacy_intent/ds={ds}/part-0000.csv"
        print(
            stack.pipeline(
                "synth", "--out", partition, "--rows", str(args.rows), "--seed", str(args.seed)
            ).stdout.strip()
        )
        # `dags test` names each run manual__<now>: each demo gets its own run prefix on today's partition.
        logical_date = now.isoformat()
        print(f"Running the DAG: airflow dags test {DAG_ID} {logical_date}  (log: {log_file})")
        test = stack.airflow("dags", "test", DAG_ID, logical_date, check=False, log_file=log_file)
        run_id, state = stack.latest_run(DAG_ID)
        xcoms = stack.xcoms(DAG_ID, run_id)
        if test.returncode != 0 or state != "success":
            print(f"\nThe run ended in state {state!r}; the last lines of {log_file}:", file=sys.stderr)
            print("\n".join(log_file.read_text(encoding="utf-8").splitlines()[-40:]), file=sys.stderr)
            return 1
        print_report(xcoms, run_id, time.monotonic() - started)
        print(f"\nPrometheus ({monitoring.prometheus_url}) has the run's figures; stage seconds, longest first:")
        print("\n".join(run_figures(monitoring, DAG_ID, run_id)))
        register = xcoms.get("register", [[-1, {}]])[0][1]
        print(f"\nMLflow ({tracking.url}): {register.get('tracking')}")
        print(
            "  browse it after the demo: .venv/mlflow/bin/python -m embedded.mlflow_server (then http://127.0.0.1:5000)"
        )
    print(f"\nServe the champion: make serve, then\n{try_it_lines(f'http://127.0.0.1:{DEFAULT_PORT}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
