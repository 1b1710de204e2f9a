"""search: nearest conversations of a store version, filters applied after over-fetching, table or JSON.

Most tests search a small hand-built store with a fake encoder; the last one
runs the whole job on a few dozen conversations with the real all-MiniLM-L6-v2
and searches for a paraphrased privacy request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import cli, storage, tabular
from privacy_pipeline.config import load_config
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.conversations.encoder import model_identity
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import (
    conversations_embed,
    conversations_publish,
    conversations_redact,
    conversations_tag,
    conversations_upsert,
    conversations_validate,
    search,
)


class FakeEncoder:
    """Each distinct text gets its own random unit vector, seeded by the text's hash."""

    dim = 384

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
            vectors[row] = np.random.default_rng(seed).normal(size=self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# (conversation_id, day, intent, user text)
CONVERSATIONS = [
    (f"conv-{i:03d}", "2026-11-20" if i < 30 else "2026-11-21", "opt_out" if i % 10 == 0 else "no_privacy_intent",
     f"request number {i}")
    for i in range(60)
]  # fmt: skip


def _publish(store: str, version: str, rows: list[tuple[str, str, str, str]], parent: str | None = None,
             **settings: int) -> None:  # fmt: skip
    """A store version as publish writes it, built directly from (id, day, intent, text) rows."""
    vectors = vector_store.normalize(FakeEncoder().encode([text for *_, text in rows]))
    metadata = pd.DataFrame(
        {
            "id": vector_store.stable_ids([r[0] for r in rows]),
            "conversation_id": [r[0] for r in rows],
            "day": [r[1] for r in rows],
            "intent": [r[2] for r in rows],
            "intent_probability": 0.9,
            "snippet": [r[3] for r in rows],
            "user_id_hash": None,
            "n_messages": 2,
            "started_at": [f"{r[1]}T09:00:00Z" for r in rows],
        }
    )
    config = load_config(None, [f"conversations.{k}={v}" for k, v in settings.items()])
    index, kind = vector_store.build_index(vectors, metadata["id"].to_numpy(), config.conversations)
    layout = vector_store.StoreLayout(store)
    index_data = vector_store.index_bytes(index)
    storage.write_bytes(layout.index(version), index_data)
    storage.write_bytes(layout.metadata(version), tabular.parquet_bytes(metadata))
    hnsw = {"ef_search": config.conversations.hnsw_max_ef_search} if kind == "hnsw" else None
    manifest = {"version": version, "parent_version": parent, "index_kind": kind, "hnsw": hnsw, **model_identity(),
                "index_sha256": vector_store.index_sha256(index_data)}  # fmt: skip
    storage.write_json(layout.manifest(version), manifest)
    storage.write_json(layout.latest, {"version": version})


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = str(tmp_path / "store")
    _publish(uri, "v1", CONVERSATIONS[:30])
    _publish(uri, "v2", CONVERSATIONS, parent="v1")
    return uri


def _search(store: str, query: str, **kwargs):
    return search.run(config=load_config(), store_uri=store, query=query, encoder=FakeEncoder(), **kwargs)


def test_the_conversation_itself_is_the_nearest_with_score_one(store: str) -> None:
    result = _search(store, "request number 17", k=3)
    hits = result.xcom["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["conversation_id"] == "conv-017" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["id"] == vector_store.stable_id("conv-017")
    assert result.xcom["version"] == "v2" and result.xcom["total"] == 60
    assert result.summary.splitlines()[1].split()[:4] == ["1.", "1.000", "2026-11-20", "no_privacy_intent"]


def test_intent_filter_over_fetches_beyond_the_nearest_k(store: str) -> None:
    result = _search(store, "request number 17", k=5, intent="opt_out")
    hits = result.xcom["results"]
    assert len(hits) == 5 and {h["intent"] for h in hits} == {"opt_out"}
    # Only 6 opt-out conversations exist among 60: k=10 returns all of them, no padding.
    assert len(_search(store, "request number 17", k=10, intent="opt_out").xcom["results"]) == 6


def test_since_keeps_only_later_days_and_version_reads_an_older_version(store: str) -> None:
    hits = _search(store, "request number 17", k=10, since="2026-11-21").xcom["results"]
    assert len(hits) == 10 and {h["day"] for h in hits} == {"2026-11-21"}
    older = _search(store, "request number 45", k=60, version="v1")
    assert older.xcom["version"] == "v1" and older.xcom["total"] == 30
    assert "conv-045" not in {h["conversation_id"] for h in older.xcom["results"]}


def test_an_hnsw_version_is_searched_with_its_ef_search(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    _publish(uri, "v1", CONVERSATIONS, flat_max_vectors=0, hnsw_max_ef_search=32)
    assert _search(uri, "request number 44", k=1).xcom["results"][0]["conversation_id"] == "conv-044"


def test_an_index_changed_after_publishing_is_refused_before_faiss_reads_it(store: str) -> None:
    # A well-formed index of other vectors: FAISS would load it and search would answer from it.
    layout = vector_store.StoreLayout(store)
    storage.write_bytes(layout.index("v2"), storage.read_bytes(layout.index("v1")))
    with pytest.raises(StageError, match=r"v2/index.faiss has SHA-256 [0-9a-f]{64} but its manifest records"):
        _search(store, "request number 44")
    assert _search(store, "request number 4", version="v1").xcom["results"][0]["conversation_id"] == "conv-004"


def test_an_index_whose_manifest_records_no_hash_is_refused(store: str) -> None:
    layout = vector_store.StoreLayout(store)
    manifest = storage.read_json(layout.manifest("v2"))
    del manifest["index_sha256"]
    storage.write_json(layout.manifest("v2"), manifest)
    with pytest.raises(StageError, match="records no index_sha256"):
        _search(store, "request number 44")


def test_json_output_is_for_machines(store: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(search, "default_encoder", lambda _config: FakeEncoder())
    code = cli.main(["search", "--index", store, "--query", "request number 3", "--k", "2", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["results"][0]["conversation_id"] == "conv-003"
    assert set(payload["results"][0]) == {
        "rank", "id", "conversation_id", "score", "day", "intent", "intent_probability", "snippet",
    }  # fmt: skip


def test_bad_requests_are_refused_with_the_reason(store: str, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="--intent 'spam' is not one of data_deletion"):
        _search(store, "x", intent="spam")
    with pytest.raises(StageError, match="--k must be positive"):
        _search(store, "x", k=0)
    with pytest.raises(StageError, match="day 'last week' is not a date"):
        _search(store, "x", since="last week")
    with pytest.raises(StageError, match="has no version v9"):
        _search(store, "x", version="v9")
    with pytest.raises(StageError, match="has no published version yet"):
        _search(str(tmp_path / "empty"), "x")


def test_a_store_built_with_another_model_version_is_refused(store: str) -> None:
    layout = vector_store.StoreLayout(store)
    manifest = storage.read_json(layout.manifest("v2"))
    storage.write_json(layout.manifest("v2"), {**manifest, "sentence_model_version": "0.0.1"})
    with pytest.raises(StageError, match="built with all-MiniLM-L6-v2 0.0.1 but this image embeds queries with"):
        _search(store, "x")


# --- the real model ---------------------------------------------------------------------------------------------

PRIVACY_REQUESTS = [
    "please delete my account and erase all the personal data you hold about me",
    "I want my profile and every bit of my information permanently removed",
    "remove all my personal details from your systems, I am leaving",
    "I'm exercising my right to be forgotten, wipe my data",
    "stop sending me marketing emails and newsletters",
    "opt me out of all promotional messages please",
    "send me a copy of all the data you have collected on me",
    "I withdraw my consent for you to process my personal information",
]
SUPPORT_REQUESTS = [
    "where is my package, it was supposed to arrive yesterday",
    "I was charged twice for my subscription this month",
    "the app crashes every time I open the camera",
    "how do I change the delivery address on my order",
    "my discount code is not working at checkout",
    "can I upgrade to the family plan",
    "the tracking page says delivered but nothing arrived",
    "I need an invoice for my last purchase",
    "do you ship to Canada",
    "the password reset link does not work",
    "my headphones stopped charging after a week",
    "can I return the shoes I bought, they are too small",
    "what are your opening hours on Sunday",
    "the website is very slow today",
    "how long does standard shipping take",
    "I want to cancel the order I placed an hour ago",
    "the item in my cart disappeared",
    "can I pay with a gift card",
    "the screen of my tablet is cracked, is it covered",
    "I got the wrong colour in my delivery",
    "how do I add a second user to my plan",
    "your chatbot keeps looping",
    "can you resend the confirmation for my order",
    "the speaker won't pair with my phone",
]


def _write_source(partition: Path) -> set[str]:
    """Three dozen conversations; the privacy ones also mention an email and a phone number."""
    partition.mkdir(parents=True)
    records, privacy_ids = [], set()
    for number, text in enumerate(PRIVACY_REQUESTS + SUPPORT_REQUESTS):
        conversation_id = f"conv-{number:03d}"
        turns = [("user", f"hi, {text}"), ("agent", "Thanks for reaching out, I can help with that.")]
        if number < len(PRIVACY_REQUESTS):
            privacy_ids.add(conversation_id)
            turns.append(("user", f"my email is person{number}@example.com, phone +1 415-555-01{number:02d}"))
        turns.append(("user", "thanks"))
        messages = [{"role": r, "text": t, "timestamp": f"2026-11-20T10:0{i}:00Z"} for i, (r, t) in enumerate(turns)]
        records.append(json.dumps({"conversation_id": conversation_id, "messages": messages}))
    (partition / "part-0000.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    return privacy_ids


def test_a_paraphrased_privacy_request_finds_the_privacy_conversations_first(tmp_path: Path) -> None:
    config = load_config()
    partition = tmp_path / "raw" / "ds=2026-11-20"
    privacy_ids = _write_source(partition)
    run_uri, store = str(tmp_path / "run"), str(tmp_path / "store")
    steps = [
        (conversations_validate.run, {"source": str(partition)}),
        (conversations_redact.run, {}),
        (conversations_embed.run, {}),  # the real all-MiniLM-L6-v2
        (conversations_tag.run, {"registry_uri": str(tmp_path / "registry")}),
        (conversations_upsert.run, {"store_uri": store}),
        (conversations_publish.run, {"store_uri": store}),
    ]
    for stage_run, kwargs in steps:
        result = stage_run(config=config, run_uri=run_uri, **kwargs)
        storage.write_json(result.commit_uri, result.payload())

    deletion = search.run(
        config=config, store_uri=store, query="could you erase everything you store about me", k=4
    ).xcom["results"]
    assert all(hit["conversation_id"] in privacy_ids for hit in deletion), deletion
    assert deletion[0]["score"] > 0.5

    marketing = search.run(config=config, store_uri=store, query="no more promo emails for me please", k=2)
    assert {hit["conversation_id"] for hit in marketing.xcom["results"]} <= privacy_ids
    assert all("[EMAIL]" in hit["snippet"] and "[PHONE]" in hit["snippet"] for hit in deletion)
