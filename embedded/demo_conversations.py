"""``make demo-conversations``: two days through the real daily_conversations DAG, a re-run of day 1, then a search.

Writes two days of synthetic conversations (with fake PII) into the emulator
bucket, runs ``airflow dags test daily_conversations`` for day 1, day 2 and
day 1 again (every stage from its rendered pod spec, by the local pod
runtime), and prints the store's size after each run: it grows by day 2's
conversations and stays the same after the re-run. Then it searches for a
paraphrased privacy request and marks which hits really are privacy
conversations. Each demo publishes into a store prefix of its own, so the
story is the same every time; the registry is shared with ``make demo``, whose
champion (if any) tags the conversations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from embedded.stack import BUCKET, PROJECT, REPO, Stack, embedded_stack

DAG_ID = "daily_conversations"
QUERY = "I'd like you to wipe every piece of information you keep about me"
NEGATIVE = "no_privacy_intent"


def _run_day(stack: Stack, day: str, log_file: Path) -> dict:
    """One DAG run for ``day``; its XCom by task, or exit with the log's tail."""
    result = stack.airflow("dags", "test", DAG_ID, f"{day}T03:30:00+00:00", check=False, log_file=log_file)
    run_id, state = stack.latest_run(DAG_ID)
    if result.returncode != 0 or state != "success":
        print(f"\nThe run of {day} ended in state {state!r}; the last lines of {log_file}:", file=sys.stderr)
        print("\n".join(log_file.read_text(encoding="utf-8").splitlines()[-40:]), file=sys.stderr)
        raise SystemExit(1)
    return {task: values[0][1] for task, values in stack.xcoms(DAG_ID, run_id).items()}


def _print_run(label: str, xcoms: dict, seconds: float) -> int:
    publish, tag, redact = xcoms["publish"], xcoms["tag"], xcoms["redact"]
    counts = publish["counts"]
    tagged = f"tagged by champion {tag['champion_version']}" if tag["tagged"] else f"untagged ({tag['reason']})"
    print(f"\n{label}: success in {seconds:.0f}s")
    print(f"  validate   {xcoms['validate']['conversations']} valid, {xcoms['validate']['quarantined']} quarantined")
    redactions = ", ".join(f"{n} {kind}" for kind, n in redact["redactions"].items())
    print(f"  redact     PII in {redact['conversations_with_pii']} conversations ({redactions})")
    print(f"  embed      {xcoms['embed']['dimension']}-dim {xcoms['embed']['sentence_model']}")
    print(f"  tag        {tagged}")
    print(
        f"  publish    version {publish['version']}: index size {counts['total']} "
        f"({counts['added']} added, {counts['replaced']} replaced), {publish['index_kind']} index, "
        f"recall@10 {publish['recall_at_10']:.3f}"
    )
    return int(counts["total"])


def _synthetic_intents(stack: Stack, days: list[str]) -> dict[str, str]:
    """conversation_id -> the intent the generator wrote it for, read back from the bucket."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = stack.emulator_host
    bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(BUCKET)
    truth = {}
    for day in days:
        for line in bucket.blob(f"raw/conversations/ds={day}/part-0000.jsonl").download_as_text().splitlines():
            record = json.loads(line)
            truth[record["conversation_id"]] = record["synthetic_intent"]
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".local", help="where the embedded state lives")
    parser.add_argument("--conversations", type=int, default=300, help="conversations per day")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    now = datetime.now(UTC).replace(microsecond=0)
    day1, day2 = (now.date() - timedelta(days=1)).isoformat(), now.date().isoformat()
    store_prefix = f"vector_store/conversations-demo-{now:%Y%m%dT%H%M%SZ}"
    store_uri = f"gs://{BUCKET}/{store_prefix}/"
    log_file = args.home / f"demo-conversations-{now:%Y%m%dT%H%M%SZ}.log"
    with embedded_stack(args.home, extra_env={"PIPELINE_VECTOR_STORE_PREFIX": store_prefix}) as stack:
        print(f"Embedded default: Airflow home {stack.home / 'airflow'}, GCS emulator {stack.emulator_host}")
        print(f"Vector store: {store_uri}  (log: {log_file})")
        stack.airflow("db", "migrate", log_file=log_file)
        for day in (day1, day2):
            out = f"gs://{BUCKET}/raw/conversations/ds={day}/part-0000.jsonl"
            synth = ["synth-conversations", "--out", out, "--day", day]
            synth += ["--conversations", str(args.conversations), "--seed", str(args.seed)]
            print(stack.pipeline(*synth).stdout.strip())

        sizes = []
        for label, day in (("day 1", day1), ("day 2", day2), ("day 1 again", day1)):
            started = time.monotonic()
            sizes.append(_print_run(f"{label} ({day})", _run_day(stack, day, log_file), time.monotonic() - started))

        print("\nIndex size after each run:")
        print(f"  day 1        {sizes[0]}")
        print(f"  day 2        {sizes[1]}  (+{sizes[1] - sizes[0]}: day 2's conversations)")
        verdict = "unchanged" if sizes[2] == sizes[1] else f"CHANGED by {sizes[2] - sizes[1]}"
        print(f"  day 1 again  {sizes[2]}  ({verdict}: re-processing a day replaces its entries)")

        found = json.loads(
            stack.pipeline("search", "--index", store_uri, "--query", QUERY, "--k", "8", "--json").stdout
        )
        truth = _synthetic_intents(stack, [day1, day2])
        print(f"\nSearch (version {found['version']}): {QUERY!r}")
        for hit in found["results"]:
            written_as = truth.get(hit["conversation_id"], "?")
            mark = "privacy" if written_as != NEGATIVE else "other  "
            tagged = hit["intent"] or "untagged"
            print(f"  {hit['score']:.3f} [{mark}] {hit['day']} {tagged:<24} {hit['snippet'][:90]}")
        leading = 0
        for hit in found["results"]:
            if truth.get(hit["conversation_id"]) in (None, NEGATIVE):
                break
            leading += 1
        print(f"  the first {leading} of {len(found['results'])} hits are privacy conversations (as generated)")
        if sizes[1] <= sizes[0] or sizes[2] != sizes[1]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
