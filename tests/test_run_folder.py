"""A run folder always describes what it holds (issue 10).

A finished or checkpointed run is only ever continued or returned for the very parameters it was made
with, ``epochs`` included; anything else is refused with a RunMismatchError that changes nothing. After each
case the folder's config.json, history.csv and metrics.json agree (results.check_run_consistency).
Three entry points: train_run, the train CLI, and the 02_train notebook through papermill.
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mvlip_utils.train import experiment as exp, results, run_folder, loop as train
from mvlip_utils.study import runner as study
from mvlip_utils.settings.profiles import get_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"encoder": "vit", "epochs": 2, "generated_classes": 4, "generated_train_per_class": 8,
        "generated_val_per_class": 4, "batch_size": 16, "eval_batch_size": 16, "image_size": 32, "device": "cpu"}
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


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run; the tests using it must leave it as it is (that is what they check)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    config = tiny_config(tmp_path)
    history = train.train_run(config, progress=False)
    return config, history, snapshot(results.run_dir(config))


# ------------------------------------------------------------------------------------- train_run
@pytest.mark.parametrize("epochs", [1, 3])
def test_another_number_of_epochs_on_a_finished_run_is_refused_and_changes_nothing(finished, epochs):
    config, _, before = finished
    run = results.run_dir(config)
    with pytest.raises(run_folder.RunMismatchError) as info:
        train.train_run(config.replace(epochs=epochs), progress=False)
    message = str(info.value)
    assert str(run) in message and "a finished 2-epoch run" in message
    assert f"epochs 2 (saved) vs {epochs} (now)" in message
    assert "never extended" in message and all(way in message for way in WAYS_ON)
    assert isinstance(info.value, ValueError) and info.value.changed == {"epochs": (2, epochs)}
    assert snapshot(run) == before
    assert_consistent(run, epochs=2)


def test_a_finished_run_of_the_same_parameters_is_returned_without_writing_anything(finished):
    config, history, before = finished
    run = results.run_dir(config)
    again = train.train_run(config.replace(note="read back", num_workers=0), progress=False)
    pd.testing.assert_frame_equal(again, history, check_dtype=False)
    assert snapshot(run) == before
    assert_consistent(run, epochs=2)


def test_reusable_run_loads_the_same_run_and_refuses_another(finished):
    config, _, before = finished
    assert run_folder.reusable_run(config)
    with pytest.raises(run_folder.RunMismatchError, match="a finished 2-epoch run.*epochs 2 \\(saved\\) vs 6 \\(now\\)"):
        run_folder.reusable_run(config.replace(epochs=6))
    with pytest.raises(run_folder.RunMismatchError, match="lr 0.001 \\(saved\\) vs 0.0003 \\(now\\)"):
        run_folder.reusable_run(config.replace(lr=3e-4))
    assert not run_folder.reusable_run(config.replace(results_dir=config.results_dir + "-elsewhere"))
    assert snapshot(results.run_dir(config)) == before


def test_an_interrupted_run_resumes_only_with_its_own_epochs(tmp_path):
    config = tiny_config(tmp_path)
    run = results.run_dir(config)
    train.train_run(config, progress=False, stop_after_epoch=1)
    assert results.check_run_consistency(run) == [] and not results.is_finished(run)
    before = snapshot(run)
    with pytest.raises(run_folder.RunMismatchError) as info:
        train.train_run(config.replace(epochs=3), progress=False)
    assert "a checkpoint after epoch 1 of a 2-epoch run" in str(info.value)
    assert "epochs 2 (saved) vs 3 (now)" in str(info.value)
    assert snapshot(run) == before

    history = train.train_run(config, progress=False)  # the interrupted run itself resumes, as it always did
    assert list(history.epoch) == [1, 2]
    assert_consistent(run, epochs=2)
    finished_metrics = results.load_metrics(run)

    # interrupted between the last checkpoint and the final files: the call completes the run
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "predictions.csv"):
        (run / name).unlink()
    config_bytes = (run / "config.json").read_bytes()
    completed = train.train_run(config, progress=False)
    pd.testing.assert_frame_equal(completed, history)
    assert (run / "config.json").read_bytes() == config_bytes
    assert_consistent(run, epochs=2)
    timing = {"eval_images_per_s"}
    assert {k: v for k, v in results.load_metrics(run).items() if k not in timing} == pytest.approx(
        {k: v for k, v in finished_metrics.items() if k not in timing}, nan_ok=True)  # top5: NaN with 4 classes


def test_resume_false_retrains_with_the_new_epochs_and_leaves_nothing_of_the_old_run(tmp_path):
    config = tiny_config(tmp_path)
    run = results.run_dir(config)
    train.train_run(config, progress=False)
    history = train.train_run(config.replace(epochs=1), resume=False, progress=False)
    assert list(history.epoch) == [1]
    assert_consistent(run, epochs=1)
    assert train.torch.load(run / run_folder.CHECKPOINT, weights_only=False)["epoch"] == 1
    assert run_folder.reusable_run(config.replace(epochs=1))


# ------------------------------------------------------------------------------------------ CLI
def run_cli(config, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mvlip_utils.train", "--profile", "smoke", "--quiet",
               "--results-dir", config.results_dir, "--data-dir", config.data_dir, *extra]
    for key, value in TINY.items():
        if key != "epochs":
            command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_train_cli_refuses_other_epochs_with_the_message_and_a_nonzero_exit(finished):
    config, _, before = finished
    run = results.run_dir(config)
    done = run_cli(config, "--epochs", "3")
    assert done.returncode == 2 and "Traceback" not in done.stderr  # a user error: one line, exit status 2
    assert done.stderr.startswith("error: run folder") and str(run) in done.stderr
    assert "a finished 2-epoch run" in done.stderr and "--no-resume" in done.stderr
    assert snapshot(run) == before
    same = run_cli(config, "--epochs", "2")
    assert same.returncode == 0, same.stderr[-2000:]
    assert snapshot(run) == before


def test_the_train_cli_no_resume_retrains_with_the_new_epochs(tmp_path):
    config = tiny_config(tmp_path)
    train.train_run(config, progress=False, stop_after_epoch=1)
    done = run_cli(config, "--epochs", "1", "--no-resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_consistent(results.run_dir(config), epochs=1)


# ------------------------------------------------------------------------------ the 02_train notebook
def execute_train_notebook(tmp_path, config, name: str, **parameters):
    import papermill

    params = {"profile": "smoke", **TINY, "results_dir": config.results_dir, "data_dir": config.data_dir,
              **parameters}
    output = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_train.ipynb"), str(output), parameters=params,
                               kernel_name=study.kernel_for_this_python(), cwd=str(tmp_path),
                               progress_bar=False, log_output=False)
    return output


def markdown_outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(out.get("data", {}).get("text/markdown", "") for cell in nb.cells
                     for out in cell.get("outputs", []))


@pytest.mark.slow
def test_the_train_notebook_refuses_other_epochs_loads_the_same_and_retrains_with_resume_false(tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's mvlip_utils
    config = tiny_config(tmp_path)
    run = results.run_dir(config)
    train.train_run(config, progress=False)
    before = snapshot(run)

    with pytest.raises(PapermillExecutionError) as info:
        execute_train_notebook(tmp_path, config, "other_epochs", epochs=3)
    assert info.value.ename == "RunMismatchError"
    assert "a finished 2-epoch run" in info.value.evalue and "epochs 2 (saved) vs 3 (now)" in info.value.evalue
    assert snapshot(run) == before

    loaded = markdown_outputs(execute_train_notebook(tmp_path, config, "same"))
    assert f"We loaded the finished run in `{run}`" in loaded and "2 epoch(s)" in loaded
    assert snapshot(run) == before

    retrained = markdown_outputs(execute_train_notebook(tmp_path, config, "again", epochs=1, resume=False))
    assert f"We trained the run in `{run}` from scratch" in retrained and "1 epoch(s)" in retrained
    assert_consistent(run, epochs=1)


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


def test_a_finished_run_whose_files_disagree_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    run = results.run_dir(config)
    fake_finished_run(run, **config.to_dict())
    results.write_json(run / "config.json", {**results.load_config(run), "epochs": 6})  # relabelled
    before = snapshot(run)
    for call in (run_folder.reusable_run, lambda c: train.train_run(c, progress=False)):
        with pytest.raises(run_folder.RunMismatchError, match="whose files disagree: epochs disagree"):
            call(config.replace(epochs=6))
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- the same pattern elsewhere
def test_a_new_dataset_generator_writes_a_new_folder_instead_of_redrawing_a_finished_runs_images(tmp_path,
                                                                                                  monkeypatch):
    config = tiny_config(tmp_path)
    old = exp.dataset_root(config, progress=False)
    before = {p: p.read_bytes() for p in sorted(old.rglob("*.png"))}
    monkeypatch.setattr(exp.generated, "GENERATOR_VERSION", exp.generated.GENERATOR_VERSION + 1)
    new = exp.dataset_root(config, progress=False)
    assert new != old and new.name.endswith(f"-gen{exp.generated.GENERATOR_VERSION}")
    assert {p: p.read_bytes() for p in sorted(old.rglob("*.png"))} == before
