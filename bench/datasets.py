"""The benchmark's synthetic data: 584-dim labelled embeddings and clustered search vectors.

Both are deterministic for their seed and built in memory in seconds, so a
clean clone needs nothing downloaded.

The labelled set imitates production training data (384 sentence dims + 200
TF-IDF/SVD dims, here simply 584 columns): six intents, the five privacy
intents together about 1:9 against ``no_privacy_intent``. Each intent is a
few cluster centres in 584 dimensions, each row one centre plus unit
isotropic noise; the centres are close enough that a linear model's
clean-holdout macro-F1 lands around 0.4-0.5, where the issue's anchors are,
rather than at a trivially separable 1.0. Isotropic noise keeps the problem
well conditioned, as the (decorrelated) SVD half of real embeddings is, so
lbfgs converges in tens of iterations as it does on real data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from privacy_pipeline.config import EMBEDDING_DIM, INTENTS

NEGATIVE_LABEL = "no_privacy_intent"
# The five privacy intents share this fraction of the rows equally; the rest are negatives.
PRIVACY_SHARE = 0.10
CLUSTERS_PER_INTENT = 4
# Per-dimension standard deviation of the cluster centres (the within-cluster
# noise is 1). Calibrated at 10k rows: 0.15 gives scaler -> SMOTE -> logistic
# regression ~0.38 clean-holdout macro-F1, 0.20 gives ~0.58.
CENTRE_SPREAD = 0.17
SEARCH_DIM = 384
SEARCH_CLUSTERS = 1_000
# Within-cluster spread relative to the unit-norm centres: tight enough that
# neighbours are meaningful, loose enough that HNSW has to search.
SEARCH_CLUSTER_SPREAD = 0.35


def intent_shares() -> dict[str, float]:
    privacy = [label for label in INTENTS if label != NEGATIVE_LABEL]
    shares = dict.fromkeys(privacy, PRIVACY_SHARE / len(privacy))
    shares[NEGATIVE_LABEL] = 1.0 - PRIVACY_SHARE
    return shares


def embedding_columns(width: int = EMBEDDING_DIM) -> list[str]:
    return [f"emb_{i:03d}" for i in range(width)]


def embedded_dataset(rows: int, seed: int) -> pd.DataFrame:
    """``rows`` labelled rows: ``id``, ``label``, ``emb_000``..``emb_583`` (float32).

    Class sizes follow ``intent_shares`` exactly (up to rounding), rows are
    shuffled, ids are ``bench-<n>``.
    """
    rng = np.random.default_rng(seed)
    shares = intent_shares()
    counts = {label: int(round(rows * share)) for label, share in shares.items()}
    counts[NEGATIVE_LABEL] += rows - sum(counts.values())
    blocks, labels = [], []
    for label in INTENTS:
        centres = rng.standard_normal((CLUSTERS_PER_INTENT, EMBEDDING_DIM), dtype=np.float32) * CENTRE_SPREAD
        which = rng.integers(0, CLUSTERS_PER_INTENT, size=counts[label])
        blocks.append(centres[which] + rng.standard_normal((counts[label], EMBEDDING_DIM), dtype=np.float32))
        labels.extend([label] * counts[label])
    embeddings = np.vstack(blocks)
    order = rng.permutation(rows)
    frame = pd.DataFrame(embeddings[order], columns=embedding_columns())
    frame.insert(0, "label", np.asarray(labels, dtype=object)[order])
    frame.insert(0, "id", [f"bench-{i:07d}" for i in range(rows)])
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    path.write_bytes(buffer.getvalue())
    return path


def search_vectors(n_base: int, n_queries: int, seed: int, dim: int = SEARCH_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm float32 vectors around ``SEARCH_CLUSTERS`` centres: (base, queries), queries not in base.

    Clustered like sentence embeddings of conversations (many near-duplicates
    of a few themes), which is what makes approximate search both useful and
    non-trivial; uniform random vectors would make every neighbour equally far.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((SEARCH_CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n_base + n_queries
    # Zipf-like cluster sizes: a few big themes, a long tail.
    weights = 1.0 / np.arange(1, SEARCH_CLUSTERS + 1) ** 0.8
    which = rng.choice(SEARCH_CLUSTERS, size=total, p=weights / weights.sum())
    noise = rng.standard_normal((total, dim), dtype=np.float32) * (SEARCH_CLUSTER_SPREAD / np.sqrt(dim))
    vectors = centres[which] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors[:n_base]), np.ascontiguousarray(vectors[n_base:])
