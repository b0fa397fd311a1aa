"""The run folder (train/run_folder.py): what a finished run writes and how its files agree, the state of a run
folder (finished, missing, partial, failed), reading an edition back, and the refusal of a folder that holds
another run.

A finished run is only ever returned for the very parameters it was made with, ``epochs`` included; anything
else is refused with a RunMismatchError that changes nothing, whichever the entry point (train_run, the train
command line, the 02_train notebook). The finished runs are the session's ``finished_runs`` (two seeds of a
tiny vit run): the tests that only read them or check that a refusal leaves them as they are use them in place;
the others copy them first.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from conftest import ROOT
from mvlip_utils.data.files import read_json, write_json
from mvlip_utils.models.towers import architecture
from mvlip_utils.train import experiment as exp, loop, run_folder as rf

WAYS_ON = ("resume=False", "--no-resume", "--force", "another results_dir")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def seed_config(finished_runs, seed: int = 0, **overrides):
    return finished_runs["config"].replace(seed=seed, **overrides)


# ------------------------------------------------------------------------------ what a finished run writes
def test_a_run_writes_its_folder_with_the_documented_files_and_columns(finished_runs):
    config, root = finished_runs["config"], finished_runs["root"]
    assert rf.edition_dir(config) == root / "results" / "smoke"
    assert rf.encoder_dir(config) == root / "results" / "smoke" / "vit"
    assert [rf.run_dir(c) for c in config.runs()] == [root / "results" / "smoke" / "vit" / f"seed-{s}" for s in (0, 1)]
    assert rf.seeds_on_disk(rf.encoder_dir(config)) == [0, 1]
    for run_config in config.runs():
        run = rf.run_dir(run_config)
        assert sorted(p.name for p in run.iterdir()) == sorted([*rf.RUN_FILES, rf.CHECKPOINT])
        assert rf.run_state(run) == ("finished", "2 of 2 epochs")
        history = rf.load_history(run)
        assert list(history.columns) == rf.HISTORY_COLUMNS and list(history.epoch) == [1, 2]
        assert np.isfinite(history[["train_loss", "val_loss", "val_zeroshot_loss"]].values).all()
        metrics = rf.load_metrics(run)
        assert set(rf.METRIC_KEYS) <= set(metrics)
        assert (metrics["n_val"], metrics["n_classes"], metrics["epochs"]) == (16, 4, 2)
        assert metrics["accuracy"] == pytest.approx(history.accuracy.iloc[-1])
        assert metrics["eval_images_per_s"] > 0
        # four classes: no top-5 (null in metrics.json, NaN when read back and in the history)
        assert json.loads((run / "metrics.json").read_text())["top5"] is None
        assert np.isnan(metrics["top5"]) and history.top5.isna().all()

        saved = rf.load_config(run)
        assert (saved["encoder"], saved["seed"], saved["seeds"], saved["epochs"]) == ("vit", run_config.seed, [0, 1], 2)
        assert saved["versions"]["torch_build"] == torch.__version__ and saved["resolved_device"] == "cpu"
        assert saved["architecture"] == architecture("vit", "smoke", 32)
        assert (saved["n_train"], saved["n_val"], saved["n_classes"], len(saved["classnames"])) == (64, 16, 4, 4)
        assert saved["train_class_counts"] == [16, 16, 16, 16]
        assert saved["parameters"]["text_tower"]["trainable"] == 0
        assert saved["parameters"]["image_tower"]["trainable"] == saved["parameters"]["image_tower"]["total"] > 0

        timings = pd.read_csv(run / "timings.csv")
        assert list(timings.columns) == rf.TIMING_COLUMNS and list(timings.epoch) == [1, 2]
        assert (timings.train_images == 64).all() and (timings.val_images == 16).all()  # 4 batches of 16, 16 val
        assert (timings[["train_seconds", "validation_seconds", "checkpoint_seconds", "setup_seconds"]] > 0).all().all()
    # a seed's run is its own: the same data, another initialisation, data order and caption draws
    first, second = (rf.load_history(rf.run_dir(c)) for c in config.runs())
    assert (first.train_loss != second.train_loss).all()
    assert rf.load_config(rf.run_dir(config.runs()[0]))["data_root"] == rf.load_config(rf.run_dir(config.runs()[1]))["data_root"]


def test_per_image_results_clip_benchmark_and_before_training_agree_with_metrics(finished_runs):
    for run_config in finished_runs["config"].runs():
        run = rf.run_dir(run_config)
        metrics, saved = rf.load_metrics(run), rf.load_config(run)
        per_image = pd.read_csv(run / rf.PER_IMAGE)
        assert list(per_image.columns) == ["image", "label", "prediction", "correct", "top5_correct", "loss"]
        assert len(per_image) == metrics["n_val"] == 16
        # each row is a validation image of the dataset, by its path under the dataset
        assert per_image.image.str.startswith("val/").all() and per_image.image.is_unique
        assert all((Path(saved["data_root"]) / image).is_file() for image in per_image.image)
        assert sorted(per_image.label.unique()) == [0, 1, 2, 3] and per_image.prediction.between(0, 3).all()
        assert (per_image.correct == (per_image.label == per_image.prediction)).all()
        assert per_image.correct.mean() == pytest.approx(metrics["accuracy"])
        assert balanced_accuracy_score(per_image.label, per_image.prediction) == pytest.approx(
            metrics["mean_per_class_recall"])
        assert per_image.loss.mean() == pytest.approx(metrics["zeroshot_loss"], rel=1e-6)
        assert per_image.top5_correct.isna().all()  # four classes: no top-5

        blob = read_json(run / "clip_benchmark.json")
        assert {k: blob[k] for k in ("dataset", "model", "pretrained", "task", "seed")} == {
            "dataset": "generated", "model": "vit", "pretrained": "random", "task": "zeroshot_classification",
            "seed": run_config.seed}
        assert blob["metrics"] == {"acc1": metrics["accuracy"], "acc5": None,
                                   "mean_per_class_recall": metrics["mean_per_class_recall"]}

        before = read_json(run / rf.BEFORE_TRAINING)
        assert list(before) == ["fp32", "fp16"]  # the run's precision, then fp16 (the paper's CLIP(ViT) row)
        for values in before.values():
            assert set(values) == set(rf.METRIC_KEYS) and values["n_val"] == 16 and values["n_classes"] == 4
        # the model as built, not the trained one; fp16 rounds the same features
        assert before["fp32"]["zeroshot_loss"] != metrics["zeroshot_loss"]
        assert before["fp16"]["zeroshot_loss"] == pytest.approx(before["fp32"]["zeroshot_loss"], abs=1e-2)


def test_load_run_and_load_edition_read_the_finished_runs_and_say_what_is_not_finished(finished_runs, tmp_path):
    config = finished_runs["config"]
    encoder = tmp_path / "smoke" / "vit"
    shutil.copytree(rf.encoder_dir(config), encoder)
    run = rf.load_run(encoder / "seed-0")
    assert run["seed"] == 0 and run["run_dir"] == encoder / "seed-0"
    pd.testing.assert_frame_equal(run["history"], rf.load_history(encoder / "seed-0"))
    assert len(run["per_image"]) == 16 and list(run["timings"].epoch) == [1, 2]
    assert run["before_training"]["fp32"]["n_val"] == 16 and run["metrics"]["epochs"] == 2

    rf.write_benchmark(encoder / "benchmark.json", [{"kind": "eval_loop", "images_per_s": 10.0}])
    write_json(encoder / "flops.json", {"inference": 1.0, "train": 3.0})
    # seed 1 stopped after its first epoch's checkpoint (partial); seed 2 never ran
    (encoder / "seed-1" / "metrics.json").unlink()
    (encoder / "seed-1" / rf.PER_IMAGE).unlink()
    rf.write_table(encoder / "seed-1", "history.csv", rf.load_history(encoder / "seed-1").iloc[:1].to_dict("records"))
    runs, absent = rf.load_edition(tmp_path, "smoke", ["vit", "swin"], seeds=[0, 1, 2])
    assert list(runs) == ["vit"] and [r["seed"] for r in runs["vit"]["runs"]] == [0]
    assert absent == {"vit": "seed 1: partial (1 of 2 epochs); seed 2: missing",
                      "swin": "seed 0: missing; seed 1: missing; seed 2: missing"}
    entry = runs["vit"]
    assert entry["dir"] == encoder and entry["config"]["seed"] == 0
    assert list(entry["benchmark"]["images_per_s"]) == [10.0] and entry["benchmark_provenance"]["versions"]
    assert entry["flops"] == {"inference": 1.0, "train": 3.0} and entry["step_check"] is None
    # without the expected seeds: the run folders found
    runs, absent = rf.load_edition(tmp_path, "smoke", ["vit"])
    assert [r["seed"] for r in runs["vit"]["runs"]] == [0] and absent == {"vit": "seed 1: partial (1 of 2 epochs)"}
    assert rf.load_edition(tmp_path, "smoke", ["swin"]) == ({}, {"swin": "seed 0: missing"})  # no folder at all

    files = rf.edition_files(tmp_path / "smoke", ["vit"])
    assert files[:3] == [encoder / name for name in rf.ENCODER_FILES]
    assert files[3:] == [encoder / f"seed-{s}" / name for s in (0, 1) for name in rf.RUN_FILES]
    assert not any(f.name == rf.CHECKPOINT for f in files)


# ------------------------------------------------------------------------------------------ run_state
def fake_run(run: Path, epochs: int = 2, done: int | None = None, n_val: int = 4, final: bool = True) -> None:
    """The files of a run written by hand (no training): ``done`` epochs of history; metrics.json and
    per_image.csv.gz when ``final``."""
    done = epochs if done is None else done
    rows = [{c: 0.5 for c in rf.HISTORY_COLUMNS} | {"epoch": e} for e in range(1, done + 1)]
    rf.write_table(run, "history.csv", rows)
    write_json(run / "config.json", {"epochs": epochs, "n_val": n_val, "n_classes": 2})
    if final:
        write_json(run / "metrics.json", {"epochs": epochs, "accuracy": 0.5, "n_val": n_val, "n_classes": 2})
        pd.DataFrame({"image": [f"val/a/{i}.png" for i in range(n_val)], "label": 0, "prediction": 0,
                      "correct": True, "top5_correct": np.nan, "loss": 0.1}).to_csv(run / rf.PER_IMAGE, index=False)


def test_run_state_tells_finished_missing_partial_and_failed_and_names_what_disagrees(tmp_path):
    run = tmp_path / "run"
    assert rf.run_state(run) == ("missing", "no run files")
    fake_run(run)
    assert rf.run_state(run) == ("finished", "2 of 2 epochs")
    assert rf.state_phrase(*rf.run_state(run)) == "finished"

    def state(**changes):  # a fresh fake run with some files changed
        shutil.rmtree(run)
        fake_run(run, **{k: v for k, v in changes.items() if k in ("epochs", "done", "final")})
        for name, value in changes.get("files", {}).items():
            (run / name).write_text(value if isinstance(value, str) else json.dumps(value))
        for name in changes.get("remove", ()):
            (run / name).unlink()
        return rf.run_state(run)

    assert state(done=1, final=False) == ("partial", "1 of 2 epochs")
    assert rf.state_phrase(*rf.run_state(run)) == "partial (1 of 2 epochs)"
    assert state(done=0, final=False) == ("failed", "it stopped before its first epoch ended")
    assert state(final=False) == ("failed", "it trained 2 of 2 epochs but has no final evaluation (no metrics.json)")
    assert state(remove=["config.json"])[1].startswith("config.json is missing beside")
    # what old code did: config.json relabelled to epochs=6 over a 2-epoch history and metrics
    assert state(files={"config.json": {"epochs": 6, "n_val": 4}}) == (
        "failed", "its files disagree: config.json says 6 epochs, history.csv has 2, metrics.json says 2")
    assert state(files={"metrics.json": {"epochs": 2, "accuracy": 0.9, "n_val": 4}}) == (
        "failed", "metrics.json's accuracy 0.9 is not history.csv's last (0.5)")
    assert state(remove=[rf.PER_IMAGE]) == ("failed", f"metrics.json is there but {rf.PER_IMAGE} is missing")
    assert state(files={"metrics.json": {"epochs": 2, "accuracy": 0.5, "n_val": 5}}) == (
        "failed", f"its files disagree on the validation images: {rf.PER_IMAGE} has 4, metrics.json says 5, "
                  "config.json 4")
    assert state(files={"history.csv": "epoch,accuracy\n1,0.5\n3,0.5\n"}) == (
        "failed", "history.csv's epochs are [1, 3], not 1..2")
    assert state(files={"metrics.json": "{not json"}) == ("failed", "a run file cannot be read (JSONDecodeError)")
    assert state(files={"config.json": "[2, 4]"}) == ("failed", "a run file cannot be read (ValueError)")


def test_json_is_strict_and_nan_comes_back_from_metrics_and_history(tmp_path):
    write_json(tmp_path / "metrics.json", {"accuracy": 0.25, "top5": float("nan"), "n_classes": 4,
                                           "loss": np.float32("inf"), "nested": [np.nan, 1.0]})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"accuracy": 0.25, "top5": None, "n_classes": 4, "loss": None, "nested": [None, 1.0]}
    metrics = rf.load_metrics(tmp_path)
    assert np.isnan(metrics["top5"]) and np.isnan(metrics["loss"]) and metrics["accuracy"] == 0.25
    rf.write_table(tmp_path, "history.csv", [{"epoch": 1, "accuracy": 0.5, "top5": float("nan")}])
    history = rf.load_history(tmp_path)
    assert list(history.columns) == rf.HISTORY_COLUMNS and np.isnan(history.top5.iloc[0])
    with pytest.raises(FileNotFoundError, match="has that run trained"):
        rf.load_history(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ refusing another run
@pytest.mark.parametrize("epochs", [1, 3])
def test_another_number_of_epochs_on_a_finished_run_is_refused_and_changes_nothing(finished_runs, epochs):
    folder = rf.encoder_dir(finished_runs["config"])
    before = snapshot(folder)
    run = rf.run_dir(seed_config(finished_runs))
    with pytest.raises(rf.RunMismatchError) as info:
        loop.train_run(seed_config(finished_runs, epochs=epochs), progress=False)
    message = str(info.value)
    assert str(run) in message and "a finished 2-epoch run" in message
    assert f"epochs 2 (saved) vs {epochs} (now)" in message
    assert "never extended" in message and all(way in message for way in WAYS_ON)
    assert isinstance(info.value, ValueError) and info.value.changed == {"epochs": (2, epochs)}
    assert info.value.run_dir == run and info.value.holds == "a finished 2-epoch run"
    # every seed of train_seeds: the first refusal stops them all, before anything is written
    with pytest.raises(rf.RunMismatchError, match="seed-0 holds a finished 2-epoch run"):
        loop.train_seeds(finished_runs["config"].replace(epochs=epochs), progress=False)
    assert snapshot(folder) == before
    assert rf.run_state(run) == ("finished", "2 of 2 epochs")


def test_a_finished_run_of_the_same_parameters_is_returned_without_writing_anything(finished_runs):
    folder = rf.encoder_dir(finished_runs["config"])
    before = snapshot(folder)
    histories = {}
    # the parameters that do not change what a run computes may differ (seeds is the edition's list)
    same = finished_runs["config"].replace(note="read back", seeds=[1, 0, 2], data_cache=True, device="auto")
    for seed in (0, 1):
        histories[seed] = loop.train_run(same.replace(seed=seed), progress=False)
        pd.testing.assert_frame_equal(histories[seed], rf.load_history(rf.run_dir(same.replace(seed=seed))))
    again = loop.train_seeds(finished_runs["config"], progress=False)
    assert list(again) == [0, 1] and all(again[s].equals(histories[s]) for s in (0, 1))
    assert snapshot(folder) == before


def test_finished_run_history_loads_the_same_run_and_refuses_another(finished_runs):
    config = seed_config(finished_runs)
    tower = architecture("vit", "smoke", 32)
    before = snapshot(rf.run_dir(config))
    pd.testing.assert_frame_equal(rf.finished_run_history(config, tower), rf.load_history(rf.run_dir(config)))
    with pytest.raises(rf.RunMismatchError, match=r"a finished 2-epoch run.*epochs 2 \(saved\) vs 6 \(now\)"):
        rf.finished_run_history(config.replace(epochs=6), tower)
    with pytest.raises(rf.RunMismatchError, match=r"lr 0.001 \(saved\) vs 0.0003 \(now\)") as info:
        rf.finished_run_history(config.replace(lr=3e-4), tower)
    assert info.value.changed == {"lr": (0.001, 0.0003)} and "never extended" not in str(info.value)
    with pytest.raises(rf.RunMismatchError, match="made for another vit tower") as info:
        rf.finished_run_history(config, architecture("vit", "smoke", 64))
    assert list(info.value.changed) == ["architecture"]
    assert rf.finished_run_history(config.replace(results_dir=config.results_dir + "-elsewhere"), tower) is None
    assert snapshot(rf.run_dir(config)) == before


def test_a_finished_run_whose_files_disagree_is_refused_and_left_as_it_is(finished_runs, tmp_path):
    config = seed_config(finished_runs, results_dir=str(tmp_path / "results"), epochs=6)
    run = rf.run_dir(config)
    shutil.copytree(rf.run_dir(seed_config(finished_runs)), run)
    write_json(run / "config.json", {**rf.load_config(run), "epochs": 6})  # relabelled, as old code did
    before = snapshot(run)
    for call in (lambda: rf.finished_run_history(config, architecture("vit", "smoke", 32)),
                 lambda: loop.train_run(config, progress=False)):
        with pytest.raises(rf.RunMismatchError, match="holds a finished run, whose files disagree "
                                                      r"\(its files disagree: config.json says 6 epochs"):
            call()
    assert snapshot(run) == before


# ---------------------------------------------------------------------- the command line, in this process
def cli_arguments(config) -> list[str]:
    """The train command line's options for ``config``'s tiny runs."""
    return ["--profile", "smoke", "--quiet", "--encoder", config.encoder, "--device", "cpu",
            "--generated-classes", "4", "--generated-train-per-class", "16", "--generated-val-per-class", "4",
            "--batch-size", "16", "--image-size", "32", "--data-dir", config.data_dir]


def test_the_train_cli_refuses_other_epochs_in_one_error_line_and_returns_the_same_run(finished_runs, capsys):
    config = finished_runs["config"]
    folder = rf.encoder_dir(config)
    before = snapshot(folder)
    args = cli_arguments(config) + ["--results-dir", config.results_dir, "--seeds", "0,1"]
    assert loop.main(args + ["--epochs", "3"]) == 2  # a user error: one line, exit status 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder") and err.count("\n") == 1 and "Traceback" not in err
    assert str(folder / "seed-0") in err and "a finished 2-epoch run" in err and "--no-resume" in err
    assert snapshot(folder) == before
    assert loop.main(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {folder / 'seed-0'}" in out and f"run folder: {folder / 'seed-1'}" in out
    assert snapshot(folder) == before


def test_the_train_cli_no_resume_retrains_the_seeds_asked_with_the_new_epochs(finished_runs, tmp_path):
    config = finished_runs["config"]
    results = tmp_path / "results"
    shutil.copytree(rf.encoder_dir(config), results / "smoke" / "vit")
    seed_0 = snapshot(results / "smoke" / "vit" / "seed-0")
    args = cli_arguments(config) + ["--results-dir", str(results), "--seeds", "1", "--epochs", "1", "--no-resume"]
    assert loop.main(args) == 0
    run = results / "smoke" / "vit" / "seed-1"
    assert rf.run_state(run) == ("finished", "1 of 1 epochs")
    assert rf.load_config(run)["epochs"] == 1 and rf.load_metrics(run)["epochs"] == 1
    assert torch.load(run / rf.CHECKPOINT, weights_only=True)["epoch"] == 1
    assert list(pd.read_csv(run / "timings.csv").epoch) == [1]  # nothing of the old run is left
    assert rf.finished_run_history(config.replace(results_dir=str(results), seed=1, epochs=1),
                                   architecture("vit", "smoke", 32)) is not None
    assert snapshot(results / "smoke" / "vit" / "seed-0") == seed_0  # the seed not asked for is left alone


# ------------------------------------------------------------------------------------ the 02_train notebook
def test_the_train_notebook_refuses_other_epochs_and_changes_nothing(finished_runs, tmp_path, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from mvlip_utils.study import runner

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's mvlip_utils
    config = finished_runs["config"]
    folder = rf.encoder_dir(config)
    before = snapshot(folder)
    parameters = {"profile": "smoke", "encoder": "vit", "epochs": 3, "generated_classes": 4,
                  "generated_train_per_class": 16, "generated_val_per_class": 4, "batch_size": 16,
                  "image_size": 32, "device": "cpu", "seeds": [0, 1], "data_dir": config.data_dir,
                  "results_dir": config.results_dir}
    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(str(ROOT / "notebooks" / "02_train.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters=parameters, kernel_name=runner.kernel_for_this_python(),
                                   cwd=str(tmp_path), progress_bar=False, log_output=False)
    assert info.value.ename == "RunMismatchError"
    assert "a finished 2-epoch run" in info.value.evalue and "epochs 2 (saved) vs 3 (now)" in info.value.evalue
    assert snapshot(folder) == before


# ------------------------------------------------------------------------------ the same pattern elsewhere
def test_a_new_dataset_generator_writes_a_new_folder_instead_of_redrawing_a_finished_runs_images(finished_runs,
                                                                                                  monkeypatch):
    config = finished_runs["config"]
    old = exp.dataset_root(config, progress=False)
    assert old == Path(rf.load_config(rf.run_dir(config))["data_root"])  # the finished runs' images
    before = {p: p.read_bytes() for p in sorted(old.rglob("*.png"))}
    assert len(before) == 4 * (16 + 4)
    monkeypatch.setattr(exp.generated, "GENERATOR_VERSION", exp.generated.GENERATOR_VERSION + 1)
    new = exp.dataset_root(config, progress=False)
    assert new != old and new.parent == old.parent and new.name.endswith(f"-gen{exp.generated.GENERATOR_VERSION}")
    assert {p: p.read_bytes() for p in sorted(old.rglob("*.png"))} == before
