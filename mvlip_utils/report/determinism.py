"""The training chapter's deterministic-mode record (benchmark_suite.train_step_check's ``deterministic``)
as a table and a sentence: the mode's speed against PyTorch's default and whether its repeats were bit-identical."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd


DETERMINISTIC_FORMATS = {"images/s": "{:.1f}", "of the default's": "{:.2f}", "loss per epoch": "{}"}


def deterministic_table(check: Mapping[str, Any] | None) -> pd.DataFrame:
    """The step check's deterministic record (benchmark_suite.train_step_check's ``deterministic``) as rows:
    the run's training step in PyTorch's default mode, then each deterministic repeat, with the training
    images/s of its last epoch and its per-epoch losses. Empty without a record, or when it failed."""
    record = (check or {}).get("deterministic")
    if not record or record.get("error"):
        return pd.DataFrame()
    default = record["default_images_per_s"]

    def losses(values) -> str:
        return ", ".join(f"{x:.9f}" for x in values)

    rows = [{"mode": f"{record['train_step']}, default", "images/s": default, "of the default's": 1.0,
             "loss per epoch": losses(record["default_losses"])}]
    rows += [{"mode": f"{record['train_step']}, deterministic (repeat {i})", "images/s": rate,
              "of the default's": rate / default, "loss per epoch": losses(values)}
             for i, (rate, values) in enumerate(zip(record["images_per_s_repeats"], record["losses"]), 1)]
    return pd.DataFrame(rows)


def deterministic_sentence(check: Mapping[str, Any] | None, label: str) -> str:
    """What the deterministic record says: the mode's speed against the default's, and whether its repeats
    gave bit-identical losses."""
    record = (check or {}).get("deterministic")
    if not record:
        return ("No deterministic-mode check for this run (the training chapter runs it when the run is trained "
                "with `step_check_deterministic`).")
    step = record["train_step"]
    if record.get("error"):
        return f"Deterministic mode could not train {label}'s {step} step here: {record['error']}"
    same = ("bit-identical" if record["bit_identical"] else
            "not bit-identical: this step does not repeat exactly here even in deterministic mode")
    return (f"In deterministic mode (`deterministic=True`) {label}'s {step} step trained at "
            f"{record['deterministic_images_per_s']:.1f} images/s against {record['default_images_per_s']:.1f} in "
            f"PyTorch's default mode (x{record['relative_speed']:.2f}, one short epoch each); the per-epoch losses of "
            f"its {record['repeats']} repeats are {same}, and differ from the default mode's by at most "
            f"{record['max_rel_difference_from_default']:.1e} (relative).")
