"""The paper's reference numbers (its Tables 1-2, claims and protocol; ``paper_reference/paper_tables.json``)
and the authors' per-epoch logs (``paper_reference/authors_logs.csv``), as shipped with the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pandas as pd


def paper_reference() -> dict[str, Any]:
    """paper_tables.json, with the authors' logs as a DataFrame under ``authors_logs``."""
    folder = resources.files("mvlip_utils") / "paper_reference"
    tables = json.loads((folder / "paper_tables.json").read_text())
    with (folder / "authors_logs.csv").open() as handle:
        tables["authors_logs"] = pd.read_csv(handle)
    return tables
