"""The command lines' user errors: one `error: ...` line naming the parameter or path, exit status 2, no
traceback (each case runs the real command as a subprocess)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args, tmp_path, **env):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


TINY = ["--generated-classes", "2", "--generated-train-per-class", "2", "--generated-val-per-class", "1",
        "--epochs", "1", "--batch-size", "2"]


@pytest.mark.parametrize("args, named", [
    (["--epoch", "3"], "--epoch"),                      # unknown (no abbreviation of --epochs)
    (["--precision", "fp8"], "precision='fp8'"),        # invalid value
    (["--lr", "-1"], "lr=-1"),
    (["--encoders", "vit,resnet", "--gpus", "cpu,cpu"], "encoder='resnet'"),
])
def test_train_cli_names_a_bad_parameter(tmp_path, args, named):
    assert named in run(["mvlip_utils.train", *args], tmp_path)


def test_train_cli_names_a_missing_or_malformed_data_folder(tmp_path):
    assert "data='/no/such/folder'" in run(["mvlip_utils.train", "--data", "/no/such/folder"], tmp_path)
    bad = tmp_path / "bad"
    (bad / "train" / "cat").mkdir(parents=True)
    (bad / "val" / "cat").mkdir(parents=True)
    line = run(["mvlip_utils.train", "--data", str(bad), "--results-dir", str(tmp_path / "r")], tmp_path)
    assert str(bad / "train") in line and "no readable image" in line


def test_train_cli_names_weights_it_cannot_get(tmp_path):
    line = run(["mvlip_utils.train", "--encoder", "vit", "--model-size", "paper", "--pretrained", "true",
                "--image-size", "224", "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r"), *TINY],
               tmp_path, HF_HUB_OFFLINE="1")
    assert "pretrained weights for encoder='vit'" in line and "MVLIP_VIT_WEIGHTS" in line


def test_study_cli_names_a_bad_parameter_or_encoder(tmp_path):
    assert "unknown parameter(s) ['epoch']" in run(["mvlip_utils.study", "-p", "epoch=2", "--no-book"], tmp_path)
    line = run(["mvlip_utils.study", "--encoders", "resnet", "--no-book"], tmp_path)
    assert "--encoders: parameter encoder='resnet'" in line and "closest timm names: resnet" in line
