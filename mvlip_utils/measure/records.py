"""The benchmark's records as the chapters read them: the settings' labels and finding a run's record."""

from __future__ import annotations

import math
from typing import Any, Mapping

# Labels of the settings, as the records carry them and the tables show them
PAPER, PAPER_FUSED, STRICT, BEST, COMPILED = (
    "paper's conditions", "paper's conditions, fused AdamW", "strict fp32", "best: bf16, channels_last",
    "best + torch.compile")


def benchmark_record(run: Mapping[str, Any], **match: Any) -> dict | None:
    """The first record of a run's benchmark whose fields equal ``match`` (None if the run has no benchmark,
    lacks one of the fields, or has no such record)."""
    frame = run.get("benchmark")
    if frame is None or "kind" not in frame:
        return None
    rows = frame
    for key, value in match.items():
        if key not in rows:
            return None
        rows = rows[rows[key] == value]
    return None if rows.empty else rows.iloc[0].to_dict()


def benchmark_rate(run: Mapping[str, Any], **match: Any) -> float:
    """The images/s of ``benchmark_record(run, **match)``; NaN when there is no such record or rate."""
    record = benchmark_record(run, **match)
    return float(record["images_per_s"]) if record and record.get("images_per_s") is not None else math.nan
