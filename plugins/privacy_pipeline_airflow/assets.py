"""The Airflow assets the DAGs produce, so the web UI shows the lineage between them.

An asset event is emitted when the task that names the asset as an outlet succeeds: ``register`` for
the registry (every registered version), ``announce_champion`` for the champion (only when the run
made a new one that stayed), ``publish`` for the conversations' vector store (a new ``latest``). A DAG
that only needs to run after one of these schedules on the asset instead of a time.
"""

from __future__ import annotations

from airflow.sdk import Asset

from privacy_pipeline_airflow.settings import PipelineSettings


def registry(settings: PipelineSettings) -> Asset:
    return Asset(uri=settings.gcs_uri(settings.registry_prefix), name="privacy_intent_registry")


def champion_model(settings: PipelineSettings) -> Asset:
    """The champion pointer: the model the server and the conversations job use."""
    return Asset(uri=settings.gcs_uri(settings.registry_prefix, "champion.json"), name="privacy_intent_champion")


def conversation_index(settings: PipelineSettings) -> Asset:
    """The published vector store version (``latest.json``) that search reads."""
    return Asset(uri=settings.gcs_uri(settings.vector_store_prefix, "latest.json"), name="conversation_index")
