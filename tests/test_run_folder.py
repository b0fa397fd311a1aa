"""A run folder always describes what it holds (issue 10).

A finished or checkpointed run is only ever continued or returned for the very parameters it was made
with, ``epochs`` included; anything else is refused with a RunMismatchError that changes nothing. After each
case the folder's config.json, history.csv and metrics.json agree (results.check_run_consistency).
Three entry points: train_run, the train CLI, and the 02_train notebook through papermill.
"""

from pathlib import Path

import pandas as pd

from mvlip_utils import results
from mvlip_utils.profiles import get_config

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(encoder="vit", epochs=2, generated_classes=4, generated_train_per_class=8, generated_val_per_class=4,
            batch_size=16, eval_batch_size=16, image_size=32, device="cpu")
WAYS_ON = ("resume=False", "--no-resume", "--force", "another results_dir")


def tiny_config(tmp_path, **overrides):
    values = {**TINY, "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"), **overrides}
    return get_config("smoke", **values)


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the folder with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(run).iterdir()) if p.is_file()}


def assert_consistent(run: Path, epochs: int | None = None) -> None:
    assert results.check_run_consistency(run) == []
    if epochs is not None:
        assert results.load_config(run)["epochs"] == epochs == len(results.load_history(run))
        assert results.load_metrics(run)["epochs"] == epochs


# ------------------------------------------------------------------------- check_run_consistency
def fake_finished_run(run: Path, epochs: int = 2, n_classes: int = 2, **config) -> None:
    """The files of a finished run, written by hand (no training)."""
    history = pd.DataFrame([{c: 0.5 for c in results.HISTORY_COLUMNS} | {"epoch": e} for e in range(1, epochs + 1)])
    results.write_history(run, history.to_dict("records"))
    results.write_json(run / "config.json", {"epochs": epochs, "n_val": 4, "n_classes": n_classes, **config})
    results.write_json(run / "metrics.json", {"epochs": epochs, "accuracy": 0.5, "n_val": 4, "n_classes": n_classes})
    pd.DataFrame({"label": [0] * 4, "prediction": [0] * 4}).to_csv(run / "predictions.csv", index=False)
    pd.DataFrame({"class_name": ["a", "b"][:n_classes]}).to_csv(run / "per_class.csv", index=False)
    pd.DataFrame([[0] * n_classes] * n_classes).to_csv(run / "confusion.csv")


def test_check_run_consistency_names_what_disagrees(tmp_path):
    run = tmp_path / "run"
    assert results.check_run_consistency(run) == []  # nothing there, nothing to disagree
    fake_finished_run(run)
    assert results.check_run_consistency(run) == []
    # what the old code did: config.json relabelled to epochs=6 over a 2-epoch history and metrics
    results.write_json(run / "config.json", {"epochs": 6, "n_val": 4, "n_classes": 2})
    assert results.check_run_consistency(run) == [
        "epochs disagree: config.json says 6, history.csv has 2 row(s), metrics.json says 2"]
    results.write_json(run / "config.json", {"epochs": 1, "n_val": 4, "n_classes": 2})
    problems = results.check_run_consistency(run)
    assert "history.csv has 2 epoch(s) but config.json says epochs=1" in problems
    fake_finished_run(run)
    results.write_json(run / "metrics.json", {"epochs": 2, "accuracy": 0.9, "n_val": 5, "n_classes": 2})
    problems = "\n".join(results.check_run_consistency(run))
    assert "accuracy 0.9 is not that of history.csv's last epoch" in problems
    assert "predictions.csv has 4 row(s), metrics.json says n_val=5" in problems
    (run / "config.json").unlink()
    assert results.check_run_consistency(run)[0].startswith("config.json is missing")
