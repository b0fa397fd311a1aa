"""The run checkpoint (train/checkpoint.py) and the exact resume it gives: the checkpoint holds the state at the
moment of ``save`` whatever training does meanwhile, a failed write is raised, never lost, every RNG state comes
back, a stopped run resumes to the uninterrupted run bit for bit on the CPU, and a checkpoint of another run
(other parameters, another tower) is refused with the folder left as it is.

The uninterrupted run is the session's ``finished_runs`` seed 0; the runs here train the same configuration
in their own results folder, on the finished runs' data, with its text tower built once for the module
(``shared``, as ``train_seeds`` shares it between seeds).
"""

import random
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mvlip_utils.data.files import read_json
from mvlip_utils.models import towers
from mvlip_utils.train import checkpoint as ckpt, experiment as exp, loop, run_folder as rf


@pytest.fixture(scope="module")
def shared(finished_runs):
    """The finished runs' data and frozen text tower with its prompt cache, built once for this module."""
    inputs: dict = {}
    exp.build_experiment(finished_runs["config"], progress=False, shared=inputs)
    return inputs


def run_config(finished_runs, tmp_path, **overrides):
    """The finished runs' seed 0 in a results folder of its own."""
    return finished_runs["config"].replace(seed=0, results_dir=str(tmp_path / "results"), **overrides)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def stopped_run(config, shared) -> Path:
    """``config``'s run stopped after its first epoch (as an interruption would): its folder."""
    partial = loop.train_run(config, progress=False, stop_after_epoch=1, shared=shared)
    assert list(partial.epoch) == [1]
    return rf.run_dir(config)


@pytest.fixture
def experiment(finished_runs, shared, tmp_path):
    experiment = exp.build_experiment(run_config(finished_runs, tmp_path), progress=False, shared=shared)
    experiment.run_dir.mkdir(parents=True, exist_ok=True)
    optimizer, scheduler = exp.make_optimizer(experiment)
    return experiment, optimizer, scheduler


# ---------------------------------------------------------------------------------------- the writer
def test_the_checkpoint_holds_the_state_at_save_while_training_changes_it(experiment, monkeypatch):
    experiment, optimizer, scheduler = experiment
    release = threading.Event()
    real_write = ckpt.write_checkpoint

    def held_write(state, path):  # the disk is slow: the write waits until training has changed the weights
        assert release.wait(30)
        return real_write(state, path)

    monkeypatch.setattr(ckpt, "write_checkpoint", held_write)
    before = {k: v.clone() for k, v in experiment.model.visual.state_dict().items()}
    writer = ckpt.CheckpointWriter()
    writer.save(experiment, optimizer, scheduler, 1, [{"epoch": 1, "train_loss": 1.0}])
    assert not (experiment.run_dir / rf.CHECKPOINT).exists()  # still being written: training goes on meanwhile
    with torch.no_grad():
        for p in experiment.model.visual.parameters():
            p.add_(1.0)
    release.set()
    writer.wait()
    saved = torch.load(experiment.run_dir / rf.CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1 and saved["history"] == [{"epoch": 1, "train_loss": 1.0}]
    for key, value in before.items():
        assert torch.equal(saved["model"][f"visual.{key}"], value), key
    assert any(not torch.equal(saved["model"][f"visual.{k}"], v) for k, v in
               experiment.model.visual.state_dict().items())


def test_a_failed_write_is_raised_and_the_previous_checkpoint_kept(experiment, monkeypatch):
    experiment, optimizer, scheduler = experiment
    writer = ckpt.CheckpointWriter()
    writer.save(experiment, optimizer, scheduler, 1, [])
    writer.wait()
    first = (experiment.run_dir / rf.CHECKPOINT).read_bytes()

    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_checkpoint", full_disk)
    writer.save(experiment, optimizer, scheduler, 2, [])
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert (experiment.run_dir / rf.CHECKPOINT).read_bytes() == first
    writer.wait()  # raised once; the writer is usable again


def test_the_checkpoint_restores_weights_optimiser_and_every_rng_state_and_leaves_the_frozen_text_tower_out(
        experiment):
    experiment, optimizer, scheduler = experiment
    model = experiment.model
    model.train()
    loss = model.encode_image(torch.randn(2, 3, 32, 32), normalize=True).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    writer = ckpt.CheckpointWriter()
    writer.save(experiment, optimizer, scheduler, 1, [{"epoch": 1}])
    writer.wait()
    saved = torch.load(experiment.run_dir / rf.CHECKPOINT, weights_only=True)  # tensors and plain values only
    assert saved["model"] and not any(k.startswith("text.") for k in saved["model"])
    assert saved["config"] == experiment.config.to_dict() and saved["architecture"]["size"] == "smoke"
    draws = (torch.rand(3), np.random.rand(3), random.random())
    weights = {k: v.clone() for k, v in model.visual.state_dict().items()}
    moments = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}
    with torch.no_grad():  # training goes on after the checkpoint ...
        for p in model.visual.parameters():
            p.mul_(0.5)
    optimizer.step()
    scheduler.step()
    # ... then the process dies; the run resumes from the checkpoint
    saved = ckpt.read_checkpoint(experiment)
    assert ckpt.load_checkpoint(experiment, optimizer, scheduler, saved) == (1, [{"epoch": 1}])
    assert all(torch.equal(v, weights[k]) for k, v in model.visual.state_dict().items())
    assert all(torch.equal(v["exp_avg"], moments[k]) for k, v in optimizer.state_dict()["state"].items())
    assert scheduler.last_epoch == 1
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(again[0], draws[0]) and np.array_equal(again[1], draws[1]) and again[2] == draws[2]


# ------------------------------------------------------------------------------------------- resume
def test_a_stopped_run_resumes_to_the_uninterrupted_run_bit_for_bit(finished_runs, shared, tmp_path):
    config = run_config(finished_runs, tmp_path)
    whole = rf.run_dir(finished_runs["config"].replace(seed=0))
    run = stopped_run(config, shared)
    # stop_after_epoch returns once the epoch's background checkpoint is on disk
    assert torch.load(run / rf.CHECKPOINT, weights_only=True)["epoch"] == 1
    assert rf.run_state(run) == ("partial", "1 of 2 epochs")
    assert not (run / "metrics.json").exists() and not (run / rf.PER_IMAGE).exists()
    first_epoch = pd.read_csv(run / "timings.csv")
    assert list(first_epoch.epoch) == [1]

    # the process dies here; a new call picks the run up from its last complete epoch
    resumed = loop.train_run(config, progress=False, shared=shared)
    pd.testing.assert_frame_equal(resumed, rf.load_history(whole), check_exact=True)
    pd.testing.assert_frame_equal(rf.load_history(run), rf.load_history(whole), check_exact=True)
    assert rf.run_state(run) == ("finished", "2 of 2 epochs")
    timing = {"eval_images_per_s"}
    metrics = [{k: v for k, v in rf.load_metrics(r).items() if k not in timing} for r in (run, whole)]
    assert repr(metrics[0]) == repr(metrics[1])  # NaN (top-5 with 4 classes) compares by its text
    pd.testing.assert_frame_equal(pd.read_csv(run / rf.PER_IMAGE), pd.read_csv(whole / rf.PER_IMAGE), check_exact=True)
    for name in ("clip_benchmark.json", rf.BEFORE_TRAINING):
        assert read_json(run / name) == read_json(whole / name), name
    states = [torch.load(r / rf.CHECKPOINT, weights_only=True) for r in (run, whole)]
    assert states[0]["epoch"] == states[1]["epoch"] == 2 and states[0]["model"].keys() == states[1]["model"].keys()
    assert all(torch.equal(states[0]["model"][k], states[1]["model"][k]) for k in states[0]["model"])
    moments = [s["optimizer"]["state"] for s in states]
    assert all(torch.equal(moments[0][i][m], moments[1][i][m]) for i in moments[1] for m in ("exp_avg", "exp_avg_sq"))
    # the timings of the epoch trained before the stop are kept
    timings = pd.read_csv(run / "timings.csv")
    assert list(timings.epoch) == [1, 2]
    pd.testing.assert_frame_equal(timings.iloc[:1], first_epoch)

    # interrupted between the last checkpoint and the final files: the call completes the run, training nothing
    for name in ("metrics.json", rf.PER_IMAGE, "clip_benchmark.json"):
        (run / name).unlink()
    config_bytes, history_bytes = (run / "config.json").read_bytes(), (run / "history.csv").read_bytes()
    completed = loop.train_run(config, progress=False, shared=shared)
    pd.testing.assert_frame_equal(completed, resumed)
    assert (run / "config.json").read_bytes() == config_bytes and (run / "history.csv").read_bytes() == history_bytes
    assert rf.run_state(run) == ("finished", "2 of 2 epochs")
    assert repr({k: v for k, v in rf.load_metrics(run).items() if k not in timing}) == repr(metrics[1])
    pd.testing.assert_frame_equal(pd.read_csv(run / rf.PER_IMAGE), pd.read_csv(whole / rf.PER_IMAGE), check_exact=True)


def test_a_checkpoint_of_another_run_is_refused_and_changes_nothing(finished_runs, shared, tmp_path, monkeypatch):
    config = run_config(finished_runs, tmp_path)
    run = stopped_run(config, shared)
    before = snapshot(run)
    with pytest.raises(rf.RunMismatchError) as info:
        loop.train_run(config.replace(epochs=3), progress=False, shared=shared)
    message = str(info.value)
    assert str(run) in message and "a checkpoint after epoch 1 of a 2-epoch run" in message
    assert "epochs 2 (saved) vs 3 (now)" in message and "never extended" in message
    assert info.value.changed == {"epochs": (2, 3)}
    for overrides, named in (({"lr": 5e-4}, r"lr 0.001 \(saved\) vs 0.0005 \(now\)"),
                             ({"deterministic": True}, r"deterministic False \(saved\) vs True \(now\)"),
                             ({"train_step": "fused"}, r"train_step 'eager' \(saved\) vs 'fused' \(now\)")):
        with pytest.raises(rf.RunMismatchError, match=named):
            loop.train_run(config.replace(**overrides), progress=False, shared=shared)
    with monkeypatch.context() as patch:  # the same parameters, another vit tower
        patch.setitem(towers.SMOKE_OVERRIDES, "vit", {**towers.SMOKE_OVERRIDES["vit"], "depth": 1})
        with pytest.raises(rf.RunMismatchError, match="made for another vit tower") as info:
            loop.train_run(config, progress=False, shared=shared)
        assert list(info.value.changed) == ["architecture"]
    assert snapshot(run) == before
    assert rf.run_state(run) == ("partial", "1 of 2 epochs")

    # a checkpoint that lacks a parameter that decides the run (written before it existed) is another run too
    state = torch.load(run / rf.CHECKPOINT, weights_only=True)
    del state["config"]["deterministic"]
    torch.save(state, run / rf.CHECKPOINT)
    with pytest.raises(rf.RunMismatchError, match=r"deterministic None \(saved\) vs False \(now\)"):
        loop.train_run(config, progress=False, shared=shared)


def test_a_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(finished_runs, shared,
                                                                                       tmp_path, monkeypatch):
    config = run_config(finished_runs, tmp_path)
    run = stopped_run(config, shared)
    good = torch.load(run / rf.CHECKPOINT, weights_only=True)
    original = loop.contrastive_loss

    def exploding(*args, **kwargs):
        return original(*args, **kwargs) * float("nan")

    monkeypatch.setattr(loop, "contrastive_loss", exploding)
    with pytest.raises(loop.NonFiniteLossError, match="epoch 2, step 0") as info:
        loop.train_run(config, progress=False, shared=shared)
    assert str(run / rf.CHECKPOINT) in str(info.value)
    kept = torch.load(run / rf.CHECKPOINT, weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())
    assert rf.run_state(run) == ("partial", "1 of 2 epochs")


def test_a_failed_background_write_stops_the_run_at_its_next_checkpoint_and_the_run_resumes(finished_runs, shared,
                                                                                            tmp_path, monkeypatch):
    config = run_config(finished_runs, tmp_path, epochs=3)
    run = rf.run_dir(config)
    calls = []
    real_write = ckpt.write_checkpoint

    def second_fails(state, path):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(state, path)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_checkpoint", second_fails)
        with pytest.raises(OSError, match="No space left"):
            loop.train_run(config, progress=False, shared=shared)
    assert calls == [1, 2]  # epoch 3 trained, then the save that waits for epoch 2's write raised
    assert torch.load(run / rf.CHECKPOINT, weights_only=True)["epoch"] == 1
    assert rf.run_state(run)[0] != "finished" and not (run / "metrics.json").exists()
    # started again, the run resumes from its last good checkpoint and finishes
    history = loop.train_run(config, progress=False, shared=shared)
    assert list(history.epoch) == [1, 2, 3] and rf.run_state(run) == ("finished", "3 of 3 epochs")
    assert torch.load(run / rf.CHECKPOINT, weights_only=True)["epoch"] == 3
