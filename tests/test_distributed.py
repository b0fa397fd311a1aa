"""DDP through torchrun: 2 CPU processes (gloo) train exactly what one process trains with the same global batch."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mvlip_utils.train import distributed as dist_mod
from mvlip_utils.train import experiment as exp, run_folder, loop as train
from conftest import ROOT, child_env, tiny_config


def test_rank_slices_of_the_single_process_batches():
    batches = dist_mod.global_batches(70, 16, seed=7)
    # the same batches, in the same order, as the single-process training loader (4 full batches, drop_last)
    from mvlip_utils.data.folders import make_loader

    expected = [b.tolist() for b in make_loader(range(70), 16, shuffle=True, drop_last=True, seed=7)]
    assert batches == expected and len(batches) == 4 and sorted(sum(batches, [])) != list(range(64))
    ranks = [dist_mod.rank_slices(batches, r, 2) for r in range(2)]
    assert all(len(s) == 8 for r in ranks for s in r)
    assert [a + b for a, b in zip(*ranks)] == batches
    with pytest.raises(ValueError, match="batch_size=16"):
        dist_mod.local_batch_size(16, 3)
    assert dist_mod.all_reduce_mean(2.5) == 2.5 and dist_mod.broadcast_object({"a": 1}) == {"a": 1}


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    data_dir = str(tmp_path / "data")
    single = tiny_config(tmp_path, results_dir=str(tmp_path / "one"))
    expected = train.train_run(single, progress=False)

    env = child_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "mvlip_utils.train", "--profile", "smoke", "--quiet",
               "--data-dir", data_dir, "--results-dir", str(tmp_path / "two")]
    for key in ("encoder", "epochs", "generated_classes", "generated_train_per_class", "generated_val_per_class",
                "batch_size", "image_size", "device"):
        command += [f"--{key.replace('_', '-')}", str(getattr(single, key))]
    command += ["--seeds", "0"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    config_two = single.replace(results_dir=str(tmp_path / "two"))
    one_run, two_run = run_folder.run_dir(single), run_folder.run_dir(config_two)
    got = run_folder.load_history(two_run)
    assert list(got.epoch) == [1, 2]
    # the same per-epoch training loss (each rank computes the global batch's loss) and evaluation
    np.testing.assert_allclose(got.train_loss, expected.train_loss, rtol=1e-5)
    np.testing.assert_allclose(got.val_loss, expected.val_loss, rtol=1e-5)
    np.testing.assert_allclose(got.val_zeroshot_loss, expected.val_zeroshot_loss, rtol=1e-5)
    # and the same final weights: elementwise, and as a whole against how far training moved them
    # (AdamW divides by sqrt(v): a gradient that differs in its last bits can move a weight by ~1% of lr; measured: differ ~2e-5 x moved)
    a = torch.load(one_run / run_folder.CHECKPOINT, weights_only=True)["model"]
    b = torch.load(two_run / run_folder.CHECKPOINT, weights_only=True)["model"]
    init = exp.build_experiment(single, progress=False).model.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4), (key, (a[key] - b[key]).abs().max())
    moved = torch.cat([(a[k] - init[k]).flatten() for k in a if k.startswith("visual.")]).norm()
    differ = torch.cat([(a[k] - b[k]).flatten() for k in a if k.startswith("visual.")]).norm()
    assert moved > 0.1 and differ < 1e-4 * moved, (float(moved), float(differ))
    # rank 0 alone wrote the run folder, with the world size recorded nowhere that changes results
    assert run_folder.run_state(two_run)[0] == "finished"
    assert run_folder.load_metrics(two_run)["accuracy"] == pytest.approx(run_folder.load_metrics(one_run)["accuracy"])


def test_global_batch_must_divide_over_processes():
    with pytest.raises(ValueError, match="batch_size=32"):
        dist_mod.local_batch_size(32, 3)
    assert dist_mod.local_batch_size(32, 2) == 16


def test_cli_parses_studyconfig_fields():
    parser = train.build_parser()
    args = parser.parse_args(["--profile", "paper", "--encoder", "swin", "--batch-size", "32", "--pretrained",
                              "false", "--lr", "2e-4", "--image-weights", "/w/swin.safetensors"])
    assert (args.encoder, args.batch_size, args.pretrained, args.lr, args.image_weights) == \
        ("swin", 32, False, 2e-4, "/w/swin.safetensors")
    with pytest.raises(SystemExit):
        parser.parse_args(["--pretrained", "maybe"])
