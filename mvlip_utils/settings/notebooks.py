"""The study's notebooks: their names, an edition's steps (``Step``, ``plan``), where executed copies and an
edition's record go, and each chapter's title."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .encoders import ENCODER_LABELS, encoder_folder, tower_name
from .profiles import PROFILES, records_edition

FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION = (
    "00_findings", "01_setup", "02_train", "03_evaluate", "04_benchmark", "05_discussion")
NOTEBOOKS = (FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION)
PER_ENCODER = (TRAIN, EVALUATE, BENCHMARK)
RECORDED_STEPS = (SETUP,) + PER_ENCODER  # what a recorded (GPU) edition keeps as executed

CHAPTER_TITLES = {TRAIN: "training", EVALUATE: "zero-shot evaluation", BENCHMARK: "throughput"}


@dataclass(frozen=True)
class Step:
    notebook: str               # stem, e.g. "02_train"
    encoder: str | None = None  # None for setup, discussion and findings
    profile: str = "smoke"

    @property
    def label(self) -> str:
        where = f" [{self.encoder}]" if self.encoder else ""
        return f"{self.notebook}{where}" if self.notebook == FINDINGS else f"{self.profile}: {self.notebook}{where}"

    @property
    def title(self) -> str:
        """The chapter's title, unique in the book: "MVLIP (tiny MambaVision): training, smoke edition"."""
        edition_wide = {FINDINGS: "Findings: the paper's claims, one verdict each",
                        SETUP: f"Set-up of the {self.profile} edition: machine, data, models",
                        DISCUSSION: f"Discussion of the {self.profile} edition: the paper's claims against its runs"}
        if self.notebook in edition_wide:
            return edition_wide[self.notebook]
        size = PROFILES[self.profile].get("model_size", "smoke")
        return (f"{ENCODER_LABELS[self.encoder]} ({tower_name(self.encoder, size)}): "
                f"{CHAPTER_TITLES[self.notebook]}, {self.profile} edition")

    def output(self, book_dir: Path) -> Path:
        """book/recorded/<profile>/ for a recorded edition's GPU steps, else book/executed/<profile>/ (per encoder
        under <encoder>/); the findings at book/executed/."""
        recorded = records_edition(self.profile) and self.notebook in RECORDED_STEPS
        return self.book_path(book_dir, "recorded" if recorded else "executed")

    def book_path(self, book_dir: Path, kind: str = "executed") -> Path:
        """The chapter as the book shows it, under book/executed/ (``kind``: that folder)."""
        if self.notebook == FINDINGS:
            return Path(book_dir) / kind / f"{FINDINGS}.ipynb"
        base = Path(book_dir) / kind / self.profile
        return (base / encoder_folder(self.encoder) if self.encoder else base) / f"{self.notebook}.ipynb"


def edition_record_path(book_dir: Path, profile: str) -> Path:
    """<book>/recorded|executed/<profile>/edition.json, an edition's record."""
    return Path(book_dir) / ("recorded" if records_edition(profile) else "executed") / profile / "edition.json"


def plan(encoders: Sequence[str], profile: str = "smoke") -> list[Step]:
    """Setup once, train/evaluate/benchmark per encoder, discussion once (one edition)."""
    steps = [Step(SETUP, None, profile)]
    for encoder in encoders:
        steps += [Step(nb, encoder, profile) for nb in PER_ENCODER]
    return steps + [Step(DISCUSSION, None, profile)]
