"""The daily conversations job end to end on local paths: validate -> redact -> embed -> tag -> upsert -> publish.

A deterministic fake encoder (hash-seeded random unit vectors) stands in for
all-MiniLM-L6-v2; test_search.py has the one real-model test.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import cli, model_io, modeling, storage
from privacy_pipeline.config import PipelineConfig, load_config
from privacy_pipeline.conversations import synth, vector_store
from privacy_pipeline.conversations.layout import ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import (
    conversations_embed,
    conversations_publish,
    conversations_redact,
    conversations_tag,
    conversations_upsert,
    conversations_validate,
    synth_conversations,
)

DAY1, DAY2 = "2026-11-20", "2026-11-21"
PER_DAY = {DAY1: 60, DAY2: 45}
SEED = 7


class FakeEncoder:
    """Each distinct text gets its own random unit vector, seeded by the text's hash."""

    dim = 384

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
            vectors[row] = np.random.default_rng(seed).normal(size=self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class ClusteredEncoder(FakeEncoder):
    """Texts fall into a few tight clusters: near-ties everywhere, hard for an approximate index."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        centers = np.random.default_rng(0).normal(size=(4, self.dim))
        noise = super().encode(texts)
        which = [int(hashlib.sha256(t.encode()).hexdigest(), 16) % len(centers) for t in texts]
        vectors = centers[which] + 0.02 * noise
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = str(root / "store")
        self.registry = str(root / "registry")

    def partition(self, day: str) -> str:
        return str(self.root / "raw" / "conversations" / f"ds={day}") + "/"

    def write_day(self, day: str, config: PipelineConfig) -> None:
        out = self.partition(day) + "part-0000.jsonl"
        if not storage.exists(out):
            synth_conversations.run(config=config, out=out, day=day, conversations=PER_DAY[day], seed=SEED)

    def run_uri(self, name: str) -> str:
        return str(self.root / "runs" / name)

    def run_until(self, day: str, name: str, config: PipelineConfig, last: str = "publish", encoder=None) -> dict:
        """The day's stages in DAG order up to ``last``, committing each result as the CLI does."""
        run_uri = self.run_uri(name)
        self.write_day(day, config)
        steps = [
            ("validate", conversations_validate.run, {"source": self.partition(day)}),
            ("redact", conversations_redact.run, {}),
            ("embed", conversations_embed.run, {"encoder": encoder or FakeEncoder()}),
            ("tag", conversations_tag.run, {"registry_uri": self.registry}),
            ("upsert", conversations_upsert.run, {"store_uri": self.store}),
            ("publish", conversations_publish.run, {"store_uri": self.store}),
        ]
        results = {}
        for step, stage_run, kwargs in steps:
            result = stage_run(config=config, run_uri=run_uri, **kwargs)
            storage.write_json(result.commit_uri, result.payload())
            results[step] = result
            if step == last:
                break
        return results


@pytest.fixture
def work(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def config() -> PipelineConfig:
    return load_config()


def _latest(store: str) -> dict:
    return storage.read_json(vector_store.StoreLayout(store).latest)


def _store_listing(work: Workspace) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(work.store).rglob("*")) if p.is_file()}


def test_the_store_grows_by_the_second_day_and_a_rerun_of_the_first_leaves_it_unchanged(work, config) -> None:
    first = work.run_until(DAY1, "day1", config)["publish"].xcom
    second = work.run_until(DAY2, "day2", config)["publish"].xcom
    rerun = work.run_until(DAY1, "day1-again", config)["publish"].xcom

    assert first["counts"]["total"] == PER_DAY[DAY1]
    assert second["counts"]["total"] == PER_DAY[DAY1] + PER_DAY[DAY2]
    assert second["counts"]["added"] == PER_DAY[DAY2]
    assert rerun["counts"]["total"] == second["counts"]["total"]
    assert (rerun["counts"]["added"], rerun["counts"]["replaced"]) == (0, PER_DAY[DAY1])
    assert rerun["counts"]["by_day"] == {DAY1: PER_DAY[DAY1], DAY2: PER_DAY[DAY2]}

    # Every version is kept; latest points at the last; each names its parent.
    versions = sorted(p.name for p in (Path(work.store) / "versions").iterdir())
    assert versions == sorted([first["version"], second["version"], rerun["version"]])
    assert _latest(work.store)["version"] == rerun["version"]
    manifest = storage.read_json(rerun["manifest_uri"])
    assert manifest["parent_version"] == second["version"]
    assert manifest["sentence_model"] == "all-MiniLM-L6-v2" and manifest["sentence_model_version"]
    assert manifest["dimension"] == 384 and manifest["index_kind"] == "flat"
    assert manifest["recall_at_10"] == pytest.approx(1.0)
    layout = vector_store.StoreLayout(work.store)
    index = vector_store.read_index(layout.index(rerun["version"]), manifest["index_sha256"], "test")
    metadata = vector_store.read_metadata(layout.metadata(rerun["version"]))
    assert index.ntotal == len(metadata) == PER_DAY[DAY1] + PER_DAY[DAY2]
    assert metadata["id"].is_unique and metadata["conversation_id"].is_unique


def _input_pii(work: Workspace) -> tuple[set[str], set[str]]:
    """Every email and phone number in the raw input, as written and (phones) as bare digits."""
    emails, phones = set(), set()
    for day in PER_DAY:
        text = (Path(work.partition(day)) / "part-0000.jsonl").read_text(encoding="utf-8")
        emails |= set(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text))
        for values in synth.generate_day(day, PER_DAY[day], SEED).pii.values():
            phones |= {v for v in values if re.fullmatch(r"[+\d() -]+", v) and len(re.sub(r"\D", "", v)) <= 15}
    return emails, phones


def _decoded(path: Path) -> str:
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_json(orient="records", force_ascii=False)
    return ""


def test_nothing_written_under_the_store_or_the_run_contains_an_input_email_or_phone(work, config) -> None:
    work.run_until(DAY1, "day1", config)
    work.run_until(DAY2, "day2", config)
    emails, phones = _input_pii(work)
    assert len(emails) >= 5 and len(phones) >= 5, "the synthetic input must carry PII for this test to mean anything"

    written = [p for root in (Path(work.store), work.root / "runs") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "metadata.parquet" for p in written) and any(p.name == "index.faiss" for p in written)
    for path in written:
        raw = path.read_bytes().decode("latin-1")
        decoded = _decoded(path)
        for needle in emails | phones:
            assert needle not in raw and needle not in decoded, f"{needle!r} found in {path}"
        for phone in phones:
            digits = re.sub(r"\D", "", phone)
            assert digits not in re.sub(r"\D", "", decoded), f"the digits of {phone!r} are in {path}"
    snippets = " ".join(
        snippet
        for path in written
        if path.name == "metadata.parquet"
        for snippet in vector_store.read_metadata(str(path))["snippet"]
    )
    assert "[EMAIL]" in snippets and "[PHONE]" in snippets


def test_the_recall_gate_refuses_and_publishes_nothing(work, config) -> None:
    work.run_until(DAY1, "day1", config)
    before = _store_listing(work)
    strict = load_config(None, ["conversations.min_recall_at_10=1.01"])
    work.run_until(DAY2, "day2", strict, last="upsert")
    with pytest.raises(StageError, match=r"recall@10 1\.000 .* below conversations.min_recall_at_10 1.01; nothing"):
        conversations_publish.run(config=strict, run_uri=work.run_uri("day2"), store_uri=work.store)
    assert _store_listing(work) == before


def test_a_starved_hnsw_index_on_clustered_vectors_is_refused(work, config) -> None:
    starved = load_config(
        None,
        [
            "conversations.flat_max_vectors=0",
            "conversations.hnsw_m=4",
            "conversations.hnsw_ef_construction=4",
            "conversations.hnsw_max_ef_search=1",
        ],
    )
    work.run_until(DAY1, "day1", starved, last="upsert", encoder=ClusteredEncoder())
    with pytest.raises(StageError, match="hnsw index of 60 vectors has recall@10 0"):
        conversations_publish.run(config=starved, run_uri=work.run_uri("day1"), store_uri=work.store)
    assert not Path(work.store).exists() or _store_listing(work) == {}
    # The same vectors behind a properly sized HNSW index pass the gate.
    healthy = load_config(None, ["conversations.flat_max_vectors=0"])
    published = conversations_publish.run(config=healthy, run_uri=work.run_uri("day1"), store_uri=work.store)
    assert published.xcom["index_kind"] == "hnsw" and published.xcom["recall_at_10"] >= 0.95


def test_without_a_champion_tagging_is_skipped_with_a_note(work, config) -> None:
    results = work.run_until(DAY1, "day1", config)
    tag = results["tag"]
    assert tag.xcom["tagged"] is False
    assert tag.xcom["reason"] == f"no champion in {work.registry}"
    assert "skipped, no champion in" in tag.summary
    assert not storage.exists(ConversationsLayout(work.run_uri("day1")).tags)
    manifest = storage.read_json(results["publish"].xcom["manifest_uri"])
    assert manifest["tagged"] is False and manifest["tag_note"] == tag.xcom["reason"]
    metadata = vector_store.read_metadata(vector_store.StoreLayout(work.store).metadata(manifest["version"]))
    assert metadata["intent"].isna().all()


def _register_champion(work: Workspace, model, spec: dict, version: str = "20261120T020000Z-aaaaaaaa") -> None:
    model_uri = storage.join(work.registry, "models", version, "model.skops")
    model_io.save_model(model, model_uri)
    storage.write_json(storage.join(work.registry, "models", version, "metadata.json"), {"feature_spec": spec})
    storage.write_json(storage.join(work.registry, "champion.json"), {"version": version, "model_uri": model_uri})


def test_a_champion_trained_on_production_embeddings_is_skipped_with_the_reason(work, config) -> None:
    spec = {"mode": "embedded", "text_column": None, "embedding_columns": ["emb_000"], "handcrafted_columns": []}
    _register_champion(work, {"not": "loaded"}, spec)
    tag = work.run_until(DAY1, "day1", config, last="tag")["tag"]
    assert tag.xcom["tagged"] is False
    assert "trained in embedded mode" in tag.xcom["reason"] and "cannot be featurized" in tag.xcom["reason"]
    assert tag.xcom["champion_version"] == "20261120T020000Z-aaaaaaaa"


class SilentEncoder(FakeEncoder):
    """Sentence features that carry nothing, so the tiny test model learns from TF-IDF and handcrafted features."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), self.dim), dtype=np.float32)


@pytest.fixture
def fake_sentence_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """featurize_frame's sentence encoder, swapped so no model is loaded."""
    from privacy_pipeline.stages import featurize

    monkeypatch.setattr(featurize, "SentenceEncoder", lambda _config: SilentEncoder())


def _text_champion(config: PipelineConfig):
    """A small text-mode model trained, the way train builds it, on another synthetic day's redacted user turns."""
    from privacy_pipeline.conversations.redaction import redact
    from privacy_pipeline.stages.featurize import featurize_frame

    other_day = synth.generate_day("2026-11-01", 1000, seed=11).records
    texts = [
        "\n".join(redact(m["text"]).text for m in record["messages"] if m["role"] == "user") for record in other_day
    ]
    labels = np.array([record["synthetic_intent"] for record in other_day])
    model_config = load_config(None, ["featurize.tfidf_svd_dim=50"])
    features, spec = featurize_frame(pd.DataFrame({"id": range(len(texts)), "text": texts}), model_config)
    model = modeling.build_pipeline(spec, {"clf__C": 1.0, "clf__l1_ratio": 0.0}, model_config)
    model.fit(modeling.model_inputs(features, spec, "training texts", "test"), labels)
    # Saved as train saves it: the fitted SMOTE step dropped (model_io trusts no SMOTE).
    model.set_params(smote="passthrough")
    return model, spec


def test_a_text_champion_tags_every_conversation_and_the_tags_reach_the_store(
    work, config, fake_sentence_features
) -> None:
    model, spec = _text_champion(config)
    _register_champion(work, model, spec)
    results = work.run_until(DAY1, "day1", config)
    tag = results["tag"]
    assert tag.xcom["tagged"] is True and tag.xcom["reason"] is None
    assert sum(tag.xcom["intent_counts"].values()) == PER_DAY[DAY1]
    tags = pd.read_parquet(ConversationsLayout(work.run_uri("day1")).tags)
    assert set(tags["intent"]) <= set(config.labels)
    assert tags["intent_probability"].between(0.0, 1.0).all()

    truth = {r["conversation_id"]: r["synthetic_intent"] for r in synth.generate_day(DAY1, PER_DAY[DAY1], SEED).records}
    tagged = dict(zip(tags["conversation_id"], tags["intent"], strict=True))
    privacy = [c for c, intent in truth.items() if intent != synth.NEGATIVE]
    assert np.mean([tagged[c] == truth[c] for c in truth]) > 0.9
    # The requests the day really holds are found: tagged as some privacy intent, not as none.
    assert np.mean([tagged[c] != synth.NEGATIVE for c in privacy]) >= 0.8
    metadata = vector_store.read_metadata(
        vector_store.StoreLayout(work.store).metadata(results["publish"].xcom["version"])
    )
    assert metadata["intent"].notna().all()


def test_publishing_again_for_the_same_run_is_idempotent(work, config) -> None:
    first = work.run_until(DAY1, "day1", config)["publish"]
    again = conversations_publish.run(config=config, run_uri=work.run_uri("day1"), store_uri=work.store)
    assert again.xcom["version"] == first.xcom["version"]
    assert "was already published as" in again.summary
    assert len(list((Path(work.store) / "versions").iterdir())) == 1


def test_a_candidate_whose_parent_moved_is_not_published(work, config) -> None:
    work.run_until(DAY1, "day1", config)
    work.run_until(DAY2, "late", config, last="upsert")
    work.run_until(DAY2, "early", config)
    before = _store_listing(work)
    with pytest.raises(StageError, match="moved to .* since this run's upsert read"):
        conversations_publish.run(config=config, run_uri=work.run_uri("late"), store_uri=work.store)
    assert _store_listing(work) == before


def test_vectors_of_another_model_version_are_not_mixed_into_the_store(work, config) -> None:
    published = work.run_until(DAY1, "day1", config)["publish"]
    manifest_uri = published.xcom["manifest_uri"]
    manifest = storage.read_json(manifest_uri)
    storage.write_json(manifest_uri, {**manifest, "sentence_model_version": "0.0.1"})
    with pytest.raises(StageError, match="holds all-MiniLM-L6-v2 0.0.1 384-dim vectors but this run embedded"):
        work.run_until(DAY2, "day2", config, last="upsert")


def test_redact_refuses_a_source_that_changed_since_validate(work, config) -> None:
    work.run_until(DAY1, "day1", config, last="validate")
    part = Path(work.partition(DAY1)) / "part-0000.jsonl"
    part.write_text(part.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(StageError, match="changed since conversations-validate checked it"):
        conversations_redact.run(config=config, run_uri=work.run_uri("day1"))


def test_a_stage_refuses_to_start_before_its_predecessor(work, config) -> None:
    with pytest.raises(StageError, match="has no completed conversations/redact stage"):
        conversations_embed.run(config=config, run_uri=work.run_uri("nothing"), encoder=FakeEncoder())


def test_the_cli_runs_a_stage_and_writes_its_xcom(work, config, monkeypatch, tmp_path, capsys) -> None:
    work.run_until(DAY1, "day1", config, last="redact")
    monkeypatch.setattr(conversations_embed, "default_encoder", lambda _config: FakeEncoder())
    xcom_path = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom_path))
    assert cli.main(["conversations-embed", "--run", work.run_uri("day1")]) == 0
    assert "conversations-embed: 60 conversations -> 384-dim all-MiniLM-L6-v2" in capsys.readouterr().out
    xcom = json.loads(xcom_path.read_text(encoding="utf-8"))
    assert xcom["conversations"] == 60 and xcom["embeddings_uri"].endswith("conversations/embed/embeddings.parquet")
    ids, vectors = conversations_embed.read_embeddings(xcom["embeddings_uri"])
    assert len(ids) == 60 and vectors.shape == (60, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


# Hand-written conversations and, for each message, the text redaction must leave: written out here,
# not computed by the redactor, so a detector that stops firing (or eats a word) fails the test.
KNOWN_CONVERSATIONS = [
    (
        "conv-known-1",
        [
            ("user", "Please delete my account. My email is jane.doe@example.com and my number is +44 20 7946 0958.",
             "Please delete my account. My email is [EMAIL] and my number is [PHONE]."),
            ("agent", "Sure. We will confirm at jane.doe@example.com within 30 days.",
             "Sure. We will confirm at [EMAIL] within 30 days."),
            ("user", "  Thanks!  ", "  Thanks!  "),
        ],
    ),
    (
        "conv-known-2",
        [
            ("user", "My card 4111 1111 1111 1111 was charged twice; I logged in from 203.0.113.7 yesterday.",
             "My card [CARD] was charged twice; I logged in from [IP] yesterday."),
        ],
    ),
    (
        "conv-known-3",
        [("user", "Stop sending me newsletters, please.", "Stop sending me newsletters, please.")],
    ),
]  # fmt: skip


def _write_known_day(work: Workspace) -> None:
    lines = []
    for conversation_id, turns in KNOWN_CONVERSATIONS:
        messages = [
            {"role": role, "text": text, "timestamp": f"{DAY1}T10:00:{second:02d}Z"}
            for second, (role, text, _) in enumerate(turns)
        ]
        lines.append(json.dumps({"conversation_id": conversation_id, "user_id": "u-1", "messages": messages}))
    part = Path(work.partition(DAY1)) / "part-0000.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_redaction_keeps_each_message_and_replaces_exactly_the_pii(work, config) -> None:
    _write_known_day(work)
    work.run_until(DAY1, "day1", config, last="redact")
    redacted = pd.read_parquet(io.BytesIO(storage.read_bytes(ConversationsLayout(work.run_uri("day1")).redacted)))

    by_id = {row.conversation_id: row for row in redacted.itertuples(index=False)}
    assert sorted(by_id) == [conversation_id for conversation_id, _ in KNOWN_CONVERSATIONS]
    for conversation_id, turns in KNOWN_CONVERSATIONS:
        row = by_id[conversation_id]
        assert [(m["role"], m["text"]) for m in row.messages] == [(role, want) for role, _, want in turns]
        user_turns = [want.strip() for role, _, want in turns if role == "user"]
        assert row.user_text == "\n".join(user_turns)
        assert row.snippet == " / ".join(user_turns)
        assert row.n_messages == len(turns)
    assert (
        by_id["conv-known-1"].user_text
        == "Please delete my account. My email is [EMAIL] and my number is [PHONE].\nThanks!"
    )
