"""conversations-drift on local paths: two ordinary days in the store, then a third day, ordinary or shifted.

A bag-of-words hashing encoder stands in for all-MiniLM-L6-v2 (words in another language land in other
dimensions, as they move a sentence embedding); the champion's tags are written as conversations-tag
writes them, by a keyword rule, so no model is trained here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import cli, storage, tabular
from privacy_pipeline.config import PipelineConfig, load_config
from privacy_pipeline.conversations.layout import TAG, ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import (
    conversations_embed,
    conversations_publish,
    conversations_redact,
    conversations_upsert,
    conversations_validate,
    drift,
    synth,
    synth_conversations,
)

REFERENCE_DAYS = ("2026-11-18", "2026-11-19")
DAY = "2026-11-20"
PER_DAY = 240
CHAMPION = "20261117T020000Z-aaaaaaaa"


class HashingEncoder:
    dim = 384

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(n_features=self.dim, alternate_sign=False, norm="l2")
        return vectorizer.transform(list(texts)).toarray().astype(np.float32)


def _keyword_intent(text: str) -> str:
    lowered = text.lower()
    for intent, cue in (("data_deletion", "delet"), ("opt_out", "opt"), ("data_access", "copy")):
        if cue in lowered:
            return intent
    return "no_privacy_intent"


class Workspace:
    def __init__(self, root: Path, config: PipelineConfig) -> None:
        self.root, self.config = root, config
        self.store = str(root / "store")
        self.registry = str(root / "registry")
        self.training_data = str(root / "raw" / "privacy_intent")

    def run_day(self, day: str, name: str, *, seed: int = 7, shift: float = 0.0, publish: bool = False) -> str:
        """validate -> redact -> embed -> tag (keyword rule) [-> upsert -> publish] for a synthetic day."""
        partition = str(self.root / "raw" / "conversations" / name / f"ds={day}") + "/"
        synth_conversations.run(
            config=self.config,
            out=partition + "part-0000.jsonl",
            day=day,
            conversations=PER_DAY,
            seed=seed,
            shift=shift,
        )
        run_uri = str(self.root / "runs" / name)
        steps = [
            (conversations_validate.run, {"source": partition}),
            (conversations_redact.run, {}),
            (conversations_embed.run, {"encoder": HashingEncoder()}),
        ]
        for stage_run, kwargs in steps:
            commit(stage_run(config=self.config, run_uri=run_uri, **kwargs))
        layout = ConversationsLayout(run_uri)
        redacted = pd.read_parquet(layout.redacted)
        tags = pd.DataFrame(
            {
                "conversation_id": redacted["conversation_id"],
                "intent": [_keyword_intent(t) for t in redacted["user_text"]],
                "intent_probability": 0.9,
            }
        )
        storage.write_bytes(layout.tags, tabular.parquet_bytes(tags))
        storage.write_json(layout.result(TAG), {"stage": "conversations-tag", "tagged": True, "tags_uri": layout.tags})
        if publish:
            commit(conversations_upsert.run(config=self.config, run_uri=run_uri, store_uri=self.store))
            commit(conversations_publish.run(config=self.config, run_uri=run_uri, store_uri=self.store))
        return run_uri

    def drift(self, run_uri: str) -> dict:
        result = commit(
            drift.run(
                config=self.config,
                run_uri=run_uri,
                registry_uri=self.registry,
                store_uri=self.store,
                training_data=self.training_data,
            )
        )
        return result.xcom

    def register_champion(self) -> None:
        """A champion whose training split holds synth messages with their (hashing) sentence embeddings."""
        messages = synth.generate(600, seed=3)
        vectors = HashingEncoder().encode(messages["text"].tolist())
        train = pd.concat(
            [messages[["id", "text", "label"]], pd.DataFrame(vectors, columns=[f"st_{i:03d}" for i in range(384)])],
            axis=1,
        )
        train_run = str(self.root / "runs" / "training")
        storage.write_bytes(RunLayout(train_run).train_split, tabular.parquet_bytes(train))
        model_dir = storage.join(self.registry, "models", CHAMPION)
        storage.write_json(storage.join(model_dir, "metadata.json"), {"run_uri": train_run, "feature_spec": {}})
        storage.write_json(
            storage.join(self.registry, "champion.json"),
            {"version": CHAMPION, "model_uri": storage.join(model_dir, "model.skops")},
        )
        for ds in ("2026-11-10", "2026-11-19", "2026-11-25"):
            storage.write_bytes(f"{self.training_data}/ds={ds}/part-0000.csv", b"id,text,label\n")


def commit(result):
    storage.write_json(result.commit_uri, result.payload())
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("drift"), load_config(None, ["drift.sample_size=200"]))
    workspace.register_champion()
    for offset, day in enumerate(REFERENCE_DAYS):
        workspace.run_day(day, f"reference-{offset}", publish=True)
    return workspace


@pytest.fixture(scope="module")
def shifted(work: Workspace) -> tuple[str, dict]:
    run_uri = work.run_day(DAY, "shifted", seed=8, shift=0.5)
    return run_uri, work.drift(run_uri)


@pytest.fixture(scope="module")
def ordinary(work: Workspace) -> tuple[str, dict]:
    run_uri = work.run_day(DAY, "ordinary", seed=8)
    return run_uri, work.drift(run_uri)


def test_a_day_shifted_in_topic_and_language_drifts_and_names_what_moved(shifted) -> None:
    _, xcom = shifted
    assert xcom["drifted"] is True
    assert xcom["drift_score"] > 0.7
    report = storage.read_json(xcom["report_uri"])
    moved = {f["feature"] for f in report["comparisons"]["recent_days"]["features"] if f["moved"]}
    assert xcom["top_features"] and set(xcom["top_features"]) <= moved
    # Spanish and German requests about parcels and bills: fewer first-person English words, other embedding axes.
    assert any(name.startswith("embedding_pc") for name in moved), moved
    assert any(name.startswith("hc_") for name in moved), moved
    # The shifted half are no privacy requests: the champion's predicted mix leans further to no_privacy_intent.
    mix = report["comparisons"]["recent_days"]["intent_mix"]
    assert mix["day_share"]["no_privacy_intent"] > mix["reference_share"]["no_privacy_intent"]


def test_an_ordinary_day_from_another_seed_does_not_drift(ordinary) -> None:
    _, xcom = ordinary
    assert xcom["drifted"] is False
    assert 0.3 < xcom["drift_score"] < 0.55
    assert xcom["retrain"] is False


def test_drift_names_one_training_run_per_day_content_on_the_latest_labelled_partition(work, shifted) -> None:
    run_uri, xcom = shifted
    assert xcom["retrain"] is True
    assert xcom["trigger_run_id"].startswith(f"drift__{DAY}__")
    # The newest partition up to the day, not the one after it.
    assert xcom["retrain_data_prefix"] == f"{work.training_data}/ds=2026-11-19/"
    # A re-run of the same day names the same run, which the DAG's trigger then finds and skips.
    assert work.drift(run_uri)["trigger_run_id"] == xcom["trigger_run_id"]


def test_other_content_names_another_run(shifted, ordinary) -> None:
    assert shifted[1]["trigger_run_id"] != ordinary[1]["trigger_run_id"]


def test_the_champions_training_data_is_compared_and_reported(shifted) -> None:
    _, xcom = shifted
    report = storage.read_json(xcom["report_uri"])
    training = report["comparisons"]["training"]
    assert training["reference"] == f"champion {CHAMPION} training split"
    # Conversations are not single labelled messages: the skew is reported, and does not decide.
    assert xcom["training_auc"] == training["domain_auc"] > 0.5
    assert training["intent_mix"]["tested"] is True


def test_the_report_is_written_as_json_and_a_page_with_its_plots(shifted) -> None:
    _, xcom = shifted
    assert xcom["report_uri"].endswith("conversations/drift/report.json")
    report = storage.read_json(xcom["report_uri"])
    assert report["drift_score"] == xcom["drift_score"] and report["top_features"] == xcom["top_features"]
    page = Path(xcom["html_uri"]).read_text(encoding="utf-8")
    assert "DRIFTED" in page and f"{xcom['drift_score']:.3f}" in page
    assert page.count("<img src='data:image/png;base64,") >= 4
    for feature in xcom["top_features"]:
        assert feature in page


def test_without_recent_days_nothing_is_decided_and_the_report_says_why(tmp_path) -> None:
    lonely = Workspace(tmp_path, load_config(None, ["drift.sample_size=200"]))
    xcom = lonely.drift(lonely.run_day(DAY, "first"))
    assert xcom["drifted"] is False and xcom["drift_score"] is None
    assert any("no published version" in note for note in xcom["notes"])
    assert any("no champion" in note for note in xcom["notes"])


def test_bad_input_fails_with_one_line_naming_the_file(work, ordinary, tmp_path, capsys) -> None:
    run_uri, _ = ordinary
    embeddings = ConversationsLayout(run_uri).embeddings
    original = storage.read_bytes(embeddings)
    try:
        storage.write_bytes(embeddings, b"not parquet")
        with pytest.raises(StageError, match=r"embeddings\.parquet is not an embeddings file"):
            work.drift(run_uri)
        args = ["conversations-drift", "--run", run_uri, "--registry", work.registry, "--store", work.store]
        code = cli.main([*args, "--training-data", work.training_data])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == cli.EXIT_STAGE_ERROR
        assert len(error) == 1 and "embeddings.parquet" in error[0], error
    finally:
        storage.write_bytes(embeddings, original)
    with pytest.raises(StageError, match="has no completed conversations/redact stage"):
        drift.run(
            config=work.config,
            run_uri=str(tmp_path / "empty-run"),
            registry_uri=work.registry,
            store_uri=work.store,
            training_data=work.training_data,
        )


def test_psi_is_zero_for_the_same_sample_and_large_for_a_moved_one() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(size=2000)
    assert drift.psi(sample, sample) == pytest.approx(0.0)
    assert drift.psi(sample, sample + 1.0) > 0.25
    cue = (rng.random(2000) < 0.1).astype(float)
    assert drift.psi(cue, (rng.random(2000) < 0.5).astype(float)) > 0.25


def test_synth_shift_rewrites_the_share_it_is_given(tmp_path) -> None:
    out = str(tmp_path / "day.jsonl")
    result = synth_conversations.run(config=load_config(), out=out, day=DAY, conversations=200, seed=7, shift=0.5)
    assert 70 < result.xcom["shifted"] < 130
    records = [json.loads(line) for line in Path(out).read_text(encoding="utf-8").splitlines()]
    plain = synth_conversations.run(config=load_config(), out=str(tmp_path / "p.jsonl"), day=DAY, conversations=200)
    assert plain.xcom["shifted"] == 0
    firsts = [next(m["text"] for m in r["messages"] if m["role"] == "user") for r in records]
    assert sum(text in synth_conversations.SHIFTED_REQUESTS for text in firsts) > 0 or any(
        "pedido" in t or "Bestellung" in t or "Rechnung" in t for t in firsts
    )
    with pytest.raises(StageError, match="--shift must be a share between 0 and 1"):
        synth_conversations.run(config=load_config(), out=out, day=DAY, shift=1.5)
