"""The study's notebooks: their names, an edition's steps (``Step``, ``plan``), where each executed copy goes
(a recorded GPU edition's under book/recorded/, everything else under book/executed/), where a recorded
edition's record goes and the chapters' titles. The runner (``study``), the book (``book``) and the
parameters cells (``params``) share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .encoders import encoder_folder
from .profiles import records_edition

FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION = (
    "00_findings", "01_setup", "02_train", "03_evaluate", "04_benchmark", "05_discussion")
NOTEBOOKS = (FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION)
PER_ENCODER = (TRAIN, EVALUATE, BENCHMARK)
RECORDED_STEPS = (SETUP,) + PER_ENCODER  # what a recorded (GPU) edition keeps as executed

CHAPTER_TITLES = {SETUP: "Set-up: environment, data, models", TRAIN: "training",
                  EVALUATE: "zero-shot evaluation", BENCHMARK: "throughput",
                  DISCUSSION: "Discussion: the paper's claims against these runs",
                  FINDINGS: "Findings: the paper's claims, one verdict each"}


@dataclass(frozen=True)
class Step:
    notebook: str               # stem, e.g. "02_train"
    encoder: str | None = None  # None for setup, discussion and findings
    profile: str = "smoke"

    @property
    def label(self) -> str:
        where = f" [{self.encoder}]" if self.encoder else ""
        return f"{self.notebook}{where}" if self.notebook == FINDINGS else f"{self.profile}: {self.notebook}{where}"

    def output(self, book_dir: Path) -> Path:
        """Where the executed notebook goes: book/recorded/<profile>/ for a recorded edition's GPU steps,
        else book/executed/<profile>/ (per-encoder ones under <encoder>/); the findings at book/executed/."""
        if self.notebook == FINDINGS:
            return Path(book_dir) / "executed" / f"{FINDINGS}.ipynb"
        kind = "recorded" if records_edition(self.profile) and self.notebook in RECORDED_STEPS else "executed"
        base = Path(book_dir) / kind / self.profile
        if self.encoder:
            base = base / encoder_folder(self.encoder)
        return base / f"{self.notebook}.ipynb"


def edition_record_path(book_dir: Path, profile: str) -> Path:
    """book/recorded/<profile>/edition.json: a recorded edition's provenance and the seconds of its steps."""
    return Path(book_dir) / "recorded" / profile / "edition.json"


def plan(encoders: Sequence[str], profile: str = "smoke") -> list[Step]:
    """Setup once, train/evaluate/benchmark per encoder, discussion once (one edition)."""
    steps = [Step(SETUP, None, profile)]
    for encoder in encoders:
        steps += [Step(nb, encoder, profile) for nb in PER_ENCODER]
    return steps + [Step(DISCUSSION, None, profile)]
