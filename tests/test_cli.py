"""The command lines' user errors: one `error: ...` line naming the parameter or path, exit status 2, no
traceback. The train and study commands' ``main`` run in this process; one case runs the real command as a
subprocess (``python -m mvlip_utils.train``: its module entry point and its exit status)."""

import subprocess
import sys

import pytest

from conftest import child_env
from mvlip_utils.study import runner as study
from mvlip_utils.train import loop


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def train_error(capsys, *args: str) -> str:
    """The train command's error line for ``args`` (argparse's own errors exit through SystemExit)."""
    try:
        code = loop.main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, named", [
    (["--epoch", "3"], "--epoch"),                      # unknown (no abbreviation of --epochs)
    (["--seed", "1"], "--seed"),                        # a run's own seed is internal: the option is --seeds
    (["--precision", "fp8"], "precision='fp8'"),        # invalid value
    (["--lr", "-1"], "lr=-1"),
    (["--seeds", "1,1"], "seeds=[1, 1]"),
    (["--encoders", "vit,resnet", "--gpus", "cpu,cpu"], "encoder='resnet'"),
])
def test_train_cli_names_a_bad_parameter(capsys, args, named):
    assert named in train_error(capsys, *args)


def test_train_cli_names_a_missing_or_malformed_data_folder(capsys, tmp_path):
    where = ["--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")]
    assert "data='/no/such/folder'" in train_error(capsys, "--data", "/no/such/folder", *where)
    bad = tmp_path / "bad"
    (bad / "train" / "cat").mkdir(parents=True)
    (bad / "val" / "cat").mkdir(parents=True)
    line = train_error(capsys, "--data", str(bad), *where)
    assert str(bad / "train") in line and "no readable image" in line
    assert not (tmp_path / "r").exists()  # nothing was written


def test_train_command_names_weights_it_cannot_get(tmp_path):
    """The real command line: the text tower (built first) has no weights offline."""
    proc = subprocess.run(
        [sys.executable, "-m", "mvlip_utils.train", "--encoder", "vit", "--model-size", "paper", "--pretrained",
         "true", "--image-size", "224", "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r"),
         "--generated-classes", "2", "--generated-train-per-class", "2", "--generated-val-per-class", "1",
         "--epochs", "1", "--batch-size", "2", "--seeds", "0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=child_env(HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    line = one_error_line(proc.stderr)
    assert "pretrained weights for the text tower" in line and "MVLIP_TEXT_WEIGHTS" in line
    assert "text_weights=" in line and "pretrained=False" in line  # the ways on


def test_study_cli_names_a_bad_parameter_or_encoder(capsys, monkeypatch):
    """Checked against the repository's notebooks' parameters before anything runs or is written."""
    monkeypatch.setenv("MVLIP_COMMAND", "test")  # main records its command there: restored after the test
    assert study.main(["-p", "epoch=2", "--no-book"]) == 2
    assert "unknown parameter(s) ['epoch']" in one_error_line(capsys.readouterr().err)
    assert study.main(["--encoders", "resnet", "--no-book"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--encoders: parameter encoder='resnet'" in line and "closest timm names: resnet" in line
