"""``select``: gather every tune shard of the latest search and pick the best candidate.

A rerun of tune with another shard count leaves the old shard files next to
the new ones. The group of shards (same ``num_shards``) holding the most
recently written file is the latest attempt: it must be complete, and older
groups are ignored with a note in the summary. A result set that is missing a
shard, mixes searches or lacks candidates is refused rather than letting a
partial search pick the model.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

from privacy_pipeline import modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "select"
LEADERBOARD_SIZE = 10
SHARD_FILE = re.compile(r"shard-(\d+)-of-(\d+)\.json$")


def _read_shards(layout: RunLayout) -> dict[int, dict[int, tuple[str, dict[str, Any]]]]:
    """{num_shards: {shard: (uri, payload)}} for every shard file in the run's tune folder."""
    groups: dict[int, dict[int, tuple[str, dict[str, Any]]]] = defaultdict(dict)
    for uri in storage.list_uris(layout.tune_dir):
        match = SHARD_FILE.search(uri.rsplit("/", 1)[-1])
        if not match:
            continue
        shard, num_shards = int(match.group(1)), int(match.group(2))
        payload = storage.read_json(uri)
        if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
            raise StageError(
                f"{STAGE}: {uri} is not a tune shard result; rerun tune --shard {shard} --num-shards {num_shards}"
            )
        if payload.get("shard") != shard or payload.get("num_shards") != num_shards:
            raise StageError(
                f"{STAGE}: {uri} says it is shard {payload.get('shard')} of {payload.get('num_shards')}, "
                f"not {shard} of {num_shards} as its name does; rerun tune --shard {shard} --num-shards {num_shards}"
            )
        groups[num_shards][shard] = (uri, payload)
    return groups


def _latest_complete_group(
    layout: RunLayout, groups: dict[int, dict[int, tuple[str, dict[str, Any]]]]
) -> tuple[int, list[tuple[str, dict[str, Any]]], list[int]]:
    """The latest attempt's shards in order, its shard count and the shard counts of stale attempts."""
    if not groups:
        raise StageError(f"{STAGE}: no tune shard results under {layout.tune_dir}; run tune first")

    def written_at(group: dict[int, tuple[str, dict[str, Any]]]) -> int:
        return max(int(payload.get("written_at_ns", 0)) for _, payload in group.values())

    latest = max(groups, key=lambda n: written_at(groups[n]))
    stale = sorted(n for n in groups if n != latest)
    group = groups[latest]
    for shard in range(latest):
        if shard not in group:
            note = f" (older results with {', '.join(map(str, stale))} shards are stale)" if stale else ""
            raise StageError(
                f"{STAGE}: tune shard {shard} of {latest} is missing ({layout.tune_shard(shard, latest)}); "
                f"rerun tune --shard {shard} --num-shards {latest}{note}"
            )
    return latest, [group[shard] for shard in range(latest)], stale


def _gather_results(
    shards: list[tuple[str, dict[str, Any]]], num_shards: int, expected_fingerprint: str
) -> list[dict[str, Any]]:
    first_uri, first = shards[0]
    for uri, payload in shards:
        if payload.get("candidates_fingerprint") != expected_fingerprint:
            raise StageError(
                f"{STAGE}: {uri} searched a different candidate list than this config defines "
                f"(tune.search, c_grid, l1_ratios, n_trials or seed changed?); "
                f"rerun tune for all {num_shards} shards"
            )
    expected_ids = list(first.get("candidate_ids_all", []))
    results: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for uri, payload in shards:
        for result in payload["results"]:
            cid = result["candidate_id"]
            if cid in seen:
                raise StageError(f"{STAGE}: candidate {cid} appears in both {seen[cid]} and {uri}; rerun tune")
            seen[cid] = uri
            results.append(result)
    missing = [cid for cid in expected_ids if cid not in seen]
    extra = sorted(set(seen) - set(expected_ids))
    if missing or extra:
        raise StageError(
            f"{STAGE}: the tune shards hold {len(seen)} results but the search has {len(expected_ids)} candidates "
            f"(missing {missing[:5]}, unexpected {extra[:5]}, per {first_uri}); rerun tune for all {num_shards} shards"
        )
    return results


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = RunLayout(run_uri)
    num_shards, shards, stale = _latest_complete_group(layout, _read_shards(layout))
    fingerprint = modeling.candidates_fingerprint(modeling.candidates(config))
    results = _gather_results(shards, num_shards, fingerprint)
    leaderboard = modeling.ranked(results)
    best = leaderboard[0]
    if stale:
        log.warning("ignoring stale tune results with %s shards; using the latest %d-shard attempt", stale, num_shards)

    storage.write_json(
        layout.best_candidate,
        {
            "candidate_id": best["candidate_id"],
            "params": best["params"],
            "mean_score": best["mean_score"],
            "std_score": best["std_score"],
            "n_candidates": len(results),
            "num_shards": num_shards,
            "leaderboard": [
                {key: entry[key] for key in ("candidate_id", "params", "mean_score", "std_score")}
                for entry in leaderboard[:LEADERBOARD_SIZE]
            ],
        },
    )
    summary = (
        f"{STAGE}: best {best['candidate_id']} (C={best['params']['clf__C']:g}, "
        f"l1_ratio={best['params']['clf__l1_ratio']:g}) CV macro-F1 {best['mean_score']:.3f} "
        f"± {best['std_score']:.3f} of {len(results)} candidates from {num_shards} shards"
    )
    if stale:
        summary += f" (ignored stale results of an earlier tune with {', '.join(map(str, stale))} shards)"
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "best_candidate_id": best["candidate_id"],
            "best_params": best["params"],
            "cv_f1_macro": best["mean_score"],
            "n_candidates": len(results),
        },
        commit_uri=layout.result(STAGE),
    )
