"""The run checkpoint written off the training path (run_folder.CheckpointWriter): what is written is the
state at the moment of ``save``, whatever training does meanwhile; a failed write is raised, never lost; the
run's checkpoint is on disk when train_run returns, and resuming from it gives the uninterrupted run."""

import threading

import numpy as np
import pytest
import torch

from mvlip_utils.train import experiment as exp, results, run_folder, loop as train
from mvlip_utils.train.results import CHECKPOINT

from test_train_evaluate import tiny_config


@pytest.fixture
def experiment(tmp_path):
    config = tiny_config(tmp_path, epochs=1, generated_train_per_class=4)
    experiment = exp.build_experiment(config, progress=False)
    experiment.run_dir.mkdir(parents=True, exist_ok=True)
    optimizer, scheduler = exp.make_optimizer(experiment)
    return experiment, optimizer, scheduler


def test_the_checkpoint_holds_the_state_at_save_while_training_changes_it(experiment, monkeypatch):
    experiment, optimizer, scheduler = experiment
    release = threading.Event()
    real_write = run_folder.write_checkpoint

    def held_write(state, path):  # the disk is slow: the write waits until training has changed the weights
        assert release.wait(30)
        return real_write(state, path)

    monkeypatch.setattr(run_folder, "write_checkpoint", held_write)
    before = {k: v.clone() for k, v in experiment.model.visual.state_dict().items()}
    writer = run_folder.CheckpointWriter()
    assert writer.save(experiment, optimizer, scheduler, 1, [{"epoch": 1, "train_loss": 1.0}]) is None
    assert not (experiment.run_dir / CHECKPOINT).exists()  # still being written: training goes on meanwhile
    with torch.no_grad():
        for p in experiment.model.visual.parameters():
            p.add_(1.0)
    release.set()
    seconds = writer.wait()
    assert seconds is not None and seconds > 0
    saved = torch.load(experiment.run_dir / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1 and saved["history"] == [{"epoch": 1, "train_loss": 1.0}]
    for key, value in before.items():
        assert torch.equal(saved["model"][f"visual.{key}"], value), key
    assert any(not torch.equal(saved["model"][f"visual.{k}"], v) for k, v in
               experiment.model.visual.state_dict().items())


def test_a_failed_write_is_raised_and_the_previous_checkpoint_kept(experiment, monkeypatch):
    experiment, optimizer, scheduler = experiment
    writer = run_folder.CheckpointWriter()
    writer.save(experiment, optimizer, scheduler, 1, [])
    writer.wait()
    first = (experiment.run_dir / CHECKPOINT).read_bytes()

    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_folder, "write_checkpoint", full_disk)
    writer.save(experiment, optimizer, scheduler, 2, [])
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert (experiment.run_dir / CHECKPOINT).read_bytes() == first
    writer.wait()  # raised once; the writer is usable again


def test_a_failed_background_write_stops_the_run_at_its_next_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=3, generated_train_per_class=4)
    calls = []
    real_write = run_folder.write_checkpoint

    def second_fails(state, path):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(state, path)

    monkeypatch.setattr(run_folder, "write_checkpoint", second_fails)
    with pytest.raises(OSError, match="No space left"):
        train.train_run(config, progress=False)
    assert calls == [1, 2]  # epoch 3 trained, then the save that waits for epoch 2's write raised
    saved = torch.load(results.run_dir(config) / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1 and not results.is_finished(results.run_dir(config))


def test_a_run_stopped_after_an_epoch_resumes_from_its_background_checkpoint(tmp_path):
    """stop_after_epoch returns only once the checkpoint is on disk; the resumed run equals the whole one."""
    whole = train.train_run(tiny_config(tmp_path / "whole", epochs=3), progress=False)
    config = tiny_config(tmp_path / "parts", epochs=3)
    train.train_run(config, progress=False, stop_after_epoch=2)
    assert torch.load(results.run_dir(config) / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = train.train_run(config, progress=False)
    np.testing.assert_array_equal(resumed.train_loss.values, whole.train_loss.values)
    np.testing.assert_array_equal(resumed.val_loss.values, whole.val_loss.values)
