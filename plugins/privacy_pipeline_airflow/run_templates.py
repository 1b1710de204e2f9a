"""Jinja templates for where a DAG run reads and writes, so every task of a run agrees.

A run reads only its own partition (``ds``, or the ``data_prefix`` Param of a
manual or upload-triggered run) and writes only under its own run prefix,
keyed by ``run_id``: a retry, a clear or a backfill of the same run replaces
its outputs instead of adding new ones.
"""

from __future__ import annotations

import re

from privacy_pipeline_airflow.settings import PipelineSettings

# A data_prefix Param is a key inside the configured bucket: no scheme, no
# other bucket, no "..", no leading slash.
DATA_PREFIX_PATTERN = r"^(?!.*\.\.)(?!/)[A-Za-z0-9_=.,/-]+$"

_UNSAFE_IN_OBJECT_NAME = re.compile(r"[^A-Za-z0-9._=-]+")


def object_safe(value: str) -> str:
    """``manual__2026-11-23T02:00:00+00:00`` -> ``manual__2026-11-23T02-00-00-00-00`` (a clean path segment)."""
    return _UNSAFE_IN_OBJECT_NAME.sub("-", str(value)).strip("-")


USER_DEFINED_FILTERS = {"object_safe": object_safe}


def data_prefix(settings: PipelineSettings) -> str:
    """The run's input prefix within the bucket: the Param if given, else the logical date's partition."""
    return "{{ params.data_prefix or '" + settings.data_prefix.strip("/") + "/ds=' ~ ds ~ '/' }}"


def source_uri(settings: PipelineSettings) -> str:
    return f"gs://{settings.bucket}/" + data_prefix(settings)


def run_uri(settings: PipelineSettings) -> str:
    return settings.gcs_uri(settings.runs_prefix) + "/{{ run_id | object_safe }}/"


def registry_uri(settings: PipelineSettings) -> str:
    return settings.gcs_uri(settings.registry_prefix) + "/"


def conversations_partition(settings: PipelineSettings) -> str:
    """The logical date's conversations partition within the bucket: ``raw/conversations/ds=<ds>/``."""
    return settings.conversations_prefix.strip("/") + "/ds={{ ds }}/"


def conversations_source_uri(settings: PipelineSettings) -> str:
    return f"gs://{settings.bucket}/" + conversations_partition(settings)


def conversations_run_uri(settings: PipelineSettings) -> str:
    """A conversations run's own prefix, apart from training runs whose run ids may be the same."""
    return settings.gcs_uri(settings.runs_prefix, "conversations") + "/{{ run_id | object_safe }}/"


def vector_store_uri(settings: PipelineSettings) -> str:
    return settings.gcs_uri(settings.vector_store_prefix) + "/"
