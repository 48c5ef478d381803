"""The Export page, prepared without Streamlit: a recommendation as a config file or a snippet,
every format a download, with the global batch split over devices as asked."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import store
from ..errors import UsageError
from ..home import Home
from ..plan.export import FORMATS, export_config
from .widgets import CODE_LANGUAGE, FORMAT_LABELS, Download, downloads, load_recommendation

__all__ = [
    "EXPORT_START",
    "RecommendationChoice",
    "recommendation_choices",
    "ExportView",
    "export_view",
    "FORMATS",
    "FORMAT_LABELS",
    "load_recommendation",
]

EXPORT_START = (
    "No recommendation yet — compute one on the Recommend page (or run `largestep recommend`), then export it here."
)


@dataclass(frozen=True)
class RecommendationChoice:
    id: str
    label: str
    profile_id: str


def recommendation_choices(home: Home) -> list[RecommendationChoice]:
    """Every saved recommendation, newest first, for a select box."""
    with store.connect(home) as con:
        frame = store.list_recommendations(con)
    out = []
    for r in store.frame_records(frame):
        created = pd.Timestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M") if r.get("created_at") else "?"
        out.append(
            RecommendationChoice(
                r["id"],
                f"{r['workload']} · batch {r['batch_size']} at lr {r['learning_rate']:.3g} "
                f"(baseline {r['baseline_batch_size']}) · {created} ({r['id']})",
                r["profile_id"],
            )
        )
    return out


@dataclass
class ExportView:
    preview: str
    language: str
    split: str  # "global 512 = micro-batch 128 × accumulation 2 × 2 devices"
    downloads: list[Download]


def export_view(rec: dict, fmt: str, devices: int | None = None, micro_batch: int | None = None) -> ExportView:
    """The preview of ``fmt`` and every format's download, with the batch re-split if asked."""
    from ..plan.export import config_document

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    doc = config_document(rec, devices, micro_batch)  # raises UsageError on a split that does not divide
    t = doc["training"]
    split = (
        f"global batch {t['batch_size']} = micro-batch {t['micro_batch_size']} × accumulation "
        f"{t['gradient_accumulation_steps']} × {t['devices']} device{'s' if t['devices'] > 1 else ''}"
    )
    return ExportView(
        preview=export_config(rec, fmt, devices, micro_batch),
        language=CODE_LANGUAGE[fmt],
        split=split,
        downloads=downloads(rec, devices, micro_batch),
    )
