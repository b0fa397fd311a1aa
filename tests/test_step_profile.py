"""step_profile: where a training step's time goes, read back from torch.profiler's trace."""

import copy
import dataclasses
import gzip
import json
import time

import pytest
import torch

from mvlip_utils.train import experiment as exp
from mvlip_utils.measure import step_profile
from mvlip_utils.train import loop as train
from conftest import tiny_config

PHASES = train.PHASES


def _x(name, ts, dur, cat="user_annotation", **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1, "args": args}


def synthetic_trace():
    """Four steps 100 us apart (forward 0-30, backward 30-60, optimizer 60-80, data wait 90-100 of each);
    each step launches one forward kernel (20 us), one backward kernel (30 us, from another host thread, as
    autograd does) and one optimizer kernel (10 us). Steps 2 and 3 are measured: 200 us, of which the GPU
    is busy 2 x 60 us."""
    events, corr = [], 0
    for i in range(4):
        t = 100.0 * i
        events += [_x(PHASES["forward"], t, 30), _x(PHASES["backward"], t + 30, 30),
                   _x(PHASES["optimizer"], t + 60, 20),
                   _x("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", t - 10, 10)]
        for launch, start, dur, name in ((t + 5, t + 6, 20, "fwd_gemm"), (t + 35, t + 40, 30, "bwd_gemm"),
                                         (t + 65, t + 70, 10, "adamw")):
            corr += 1
            runtime = _x("cudaLaunchKernel", launch, 1, cat="cuda_runtime", correlation=corr)
            runtime["tid"] = 2 if name == "bwd_gemm" else 1
            events += [runtime, _x(name, start, dur, cat="kernel", correlation=corr)]
    events.append({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "x"}})
    return {"traceEvents": events}


def test_a_trace_is_read_into_per_step_host_and_gpu_time():
    summary = step_profile.summarize_trace(synthetic_trace(), PHASES)
    assert summary["steps"] == 2 and summary["step_ms"] == pytest.approx(0.1)
    assert summary["host_forward_ms"] == pytest.approx(0.03) and summary["host_optimizer_ms"] == pytest.approx(0.02)
    assert summary["data_wait_ms"] == pytest.approx(0.01)
    assert summary["gpu_busy_ms"] == pytest.approx(0.06) and summary["gpu_idle_ms"] == pytest.approx(0.04)
    assert summary["gpu_busy_fraction"] == pytest.approx(0.6)
    # each kernel counts for the phase in which the host launched it, whichever host thread did
    assert (summary["gpu_forward_ms"], summary["gpu_backward_ms"], summary["gpu_optimizer_ms"]) == \
        pytest.approx((0.02, 0.03, 0.01))
    assert summary["kernels_per_step"] == 3
    top = summary["top_kernels"]
    assert [k["kernel"] for k in top] == ["bwd_gemm", "fwd_gemm", "adamw"]
    assert top[0]["calls_per_step"] == 1 and top[0]["share_of_kernel_time"] == pytest.approx(0.5)


def test_a_trace_without_two_steps_is_refused_by_name():
    trace = {"traceEvents": [_x(PHASES["forward"], 0, 10)]}
    with pytest.raises(ValueError, match="mvlip.forward"):
        step_profile.summarize_trace(trace, PHASES)


class SlowImages(torch.utils.data.Dataset):
    """A training set whose every image takes ``delay`` seconds to load."""

    def __init__(self, dataset, delay):
        self.dataset, self.delay = dataset, delay

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.dataset[i]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny run's experiment (4 classes x 8 training images, batch 8: 4 steps an epoch), built once."""
    config = tiny_config(tmp_path_factory.mktemp("step-profile"), epochs=2, batch_size=8, generated_train_per_class=8,
                         num_workers=0)
    return exp.build_experiment(config, progress=False)


def test_a_profiled_epoch_measures_the_wait_for_data_and_keeps_its_trace(experiment, tmp_path):
    delay = 0.01  # 80 ms per batch of 8, loaded in the main process
    slow = dataclasses.replace(experiment, train_set=SlowImages(experiment.train_set, delay))
    optimizer, scheduler = exp.make_optimizer(slow)
    trace = tmp_path / "trace.json.gz"
    summary = step_profile.profile_training_epoch(slow, optimizer, scheduler, train.ClipLoss(), epoch=1,
                                                  steps=2, trace_path=trace)
    assert summary["steps"] == 2 and summary["device"] == "cpu" and summary["gpu_busy_ms"] is None
    assert 8 * delay * 1e3 <= summary["data_wait_ms"] < summary["step_ms"]
    host = sum(summary[f"host_{role}_ms"] for role in ("forward", "backward", "optimizer"))
    assert 0 < host and host + summary["data_wait_ms"] <= summary["step_ms"] * 1.01
    assert summary["images_per_s"] == pytest.approx(8 / summary["step_ms"] * 1e3)
    names = {e.get("name") for e in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]}
    assert {PHASES["forward"], PHASES["backward"], PHASES["optimizer"]} <= names
    with pytest.raises(ValueError, match="steps=4 needs 48 training images"):
        step_profile.profile_training_epoch(slow, optimizer, scheduler, train.ClipLoss(), 1, steps=4)


def test_reading_the_losses_back_in_blocks_changes_nothing(experiment, monkeypatch):
    """The loop reads its losses back every READ_LOSS_EVERY steps: the same epoch losses as reading every step
    (from the same start), and a non-finite loss is still named with its step."""
    start = copy.deepcopy(experiment.model.state_dict())
    losses = {}
    for every in (1, 3):  # every step; a block of 3 and the part block left at the epoch's end
        monkeypatch.setattr(train, "READ_LOSS_EVERY", every)
        experiment.model.load_state_dict(start)
        optimizer, scheduler = exp.make_optimizer(experiment)
        losses[every] = train.train_one_epoch(experiment, optimizer, scheduler, train.ClipLoss(), 1, False)
    assert losses[1] == losses[3]

    original, calls = train.contrastive_loss, []

    def exploding_at_step_1(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(train, "contrastive_loss", exploding_at_step_1)  # read back after step 2, named step 1
    experiment.model.load_state_dict(start)
    optimizer, scheduler = exp.make_optimizer(experiment)
    with pytest.raises(train.NonFiniteLossError, match="epoch 1, step 1;"):
        train.train_one_epoch(experiment, optimizer, scheduler, train.ClipLoss(), 1, False)
