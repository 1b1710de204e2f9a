"""``synth-conversations``: one day of synthetic support conversations, the daily job's input form.

Writes ``--out`` as JSONL (one conversation per line) or Parquet, by its suffix.
Not part of a run: no commit marker.

``--shift F`` rewrites the user turns of a share F of the conversations into a day the champion never
saw: Spanish and German messages about deliveries, bills and app faults (topic and language both move),
for the drift stage's tests and demo. Their ``synthetic_intent`` becomes ``no_privacy_intent``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.schema import parse_day
from privacy_pipeline.conversations.synth import NEGATIVE, generate_day
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "synth-conversations"
SHIFTED_REQUESTS: tuple[str, ...] = (
    "hola, mi pedido {order} no ha llegado todavía, ¿dónde está?",
    "quiero cambiar la dirección de entrega del pedido {order}",
    "la aplicación se cierra cada vez que abro el carrito de compras",
    "me cobraron dos veces la factura de este mes, necesito un reembolso",
    "¿por qué tarda tanto el envío a Canarias? llevo dos semanas esperando",
    "el cupón de descuento no funciona en la caja",
    "guten Tag, meine Bestellung {order} ist beschädigt angekommen",
    "die Rechnung für diesen Monat wurde doppelt abgebucht, bitte erstatten",
    "wie kann ich die Lieferadresse für Bestellung {order} ändern?",
    "die App stürzt beim Bezahlen immer ab, was soll ich tun?",
    "wann kommt mein Paket endlich an? Die Sendungsverfolgung zeigt nichts",
    "der Gutscheincode wird an der Kasse nicht akzeptiert",
)
SHIFTED_FOLLOW_UPS: tuple[str, ...] = ("gracias", "vale, muchas gracias", "danke schön", "alles klar", "perfecto")


def _shift(records: list[dict[str, Any]], share: float, seed: int, day: str) -> int:
    """Rewrite the user turns of ``share`` of ``records`` into the shifted wording; returns how many."""
    # Its own stream, so the unshifted conversations stay those of the same seed without --shift.
    rng = np.random.default_rng([seed, int(day.replace("-", "")), 1])
    shifted = 0
    for record in records:
        if rng.random() >= share:
            continue
        users = [m for m in record["messages"] if m["role"] == "user"]
        order = f"#{int(rng.integers(10_000, 99_999))}"
        users[0]["text"] = SHIFTED_REQUESTS[int(rng.integers(len(SHIFTED_REQUESTS)))].format(order=order)
        for message in users[1:]:
            message["text"] = SHIFTED_FOLLOW_UPS[int(rng.integers(len(SHIFTED_FOLLOW_UPS)))]
        record["synthetic_intent"] = NEGATIVE
        shifted += 1
    return shifted


def run(
    *, config: PipelineConfig, out: str, day: str, conversations: int = 500, seed: int = 7, shift: float = 0.0
) -> StageResult:
    day = parse_day(day, STAGE)
    if conversations <= 0:
        raise StageError(f"{STAGE}: --conversations must be positive, got {conversations}")
    if not 0.0 <= shift <= 1.0:
        raise StageError(f"{STAGE}: --shift must be a share between 0 and 1, got {shift}")
    if out.endswith(".parquet"):
        fmt = "parquet"
    elif out.endswith((".jsonl", ".json", ".ndjson")):
        fmt = "jsonl"
    else:
        raise StageError(f"{STAGE}: --out {out} must end in .jsonl or .parquet")

    synthetic = generate_day(day, conversations, seed)
    shifted = _shift(synthetic.records, shift, seed, day) if shift else 0
    if fmt == "jsonl":
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in synthetic.records).encode("utf-8")
    else:
        data = tabular.parquet_bytes(pa.Table.from_pylist(synthetic.records))
    storage.write_bytes(out, data)

    intents = Counter(record["synthetic_intent"] for record in synthetic.records)
    privacy = conversations - intents.get(NEGATIVE, 0)
    log.info("wrote %d conversations of %s to %s", conversations, day, out)
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: wrote {conversations} conversations of {day} ({privacy} privacy requests, "
            f"{len(synthetic.pii)} with PII{f', {shifted} shifted' if shift else ''}) to {out}"
        ),
        xcom={
            "uri": out,
            "day": day,
            "conversations": conversations,
            "privacy_conversations": privacy,
            "intent_counts": dict(sorted(intents.items())),
            "conversations_with_pii": len(synthetic.pii),
            "format": fmt,
            "shifted": shifted,
        },
    )
