"""Results as plain files with their provenance: the benchmark files (run_folder.write_benchmark, strict JSON
with the date, command, code commit, GPU, driver and versions, never the host name), and where
the code's commit comes from (train/provenance.py)."""

import json
import socket
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from mvlip_utils.train import provenance, run_folder as rf


def test_write_and_read_benchmark_roundtrip(tmp_path):
    records = [dict(encoder="vit", images_per_s=12.5, peak_memory_bytes=None, p10_s=np.float32(0.25),
                    n=np.int64(3)), dict(encoder="swin", images_per_s=float("nan"), oom=np.bool_(True))]
    path = rf.write_benchmark(tmp_path / "sub" / "bench.json", records, {"command": "python x.py --flag", "note": "t"})
    text = path.read_text()
    blob = json.loads(text)  # strict JSON: NaN became null
    assert "NaN" not in text and blob["records"][1]["images_per_s"] is None
    assert blob["format"] == rf.BENCHMARK_FORMAT
    assert blob["provenance"]["note"] == "t" and blob["provenance"]["command"] == "python x.py --flag"
    for key in ("date_utc", "versions", "gpus", "python", "git_commit", "git_dirty", "driver"):
        assert key in blob["provenance"]
    assert blob["provenance"]["versions"]["torch_build"] == torch.__version__
    assert socket.gethostname() not in text
    back = rf.read_benchmark(path)
    assert back["records"][0]["images_per_s"] == 12.5 and back["records"][0]["n"] == 3
    assert list(back["frame"]["encoder"]) == ["vit", "swin"]
    df_path = rf.write_benchmark(tmp_path / "df.json", pd.DataFrame(records))
    assert len(rf.read_benchmark(df_path)["records"]) == 2
    assert rf.read_benchmark(rf.write_benchmark(tmp_path / "one.json", records[0]))["records"] == [
        {**records[0], "p10_s": 0.25}]  # one record: a list of one
    with pytest.raises(TypeError, match="records must be"):
        rf.write_benchmark(tmp_path / "bad.json", "not records")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a"):
        rf.read_benchmark(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        rf.read_benchmark(tmp_path / "missing.json")


def test_provenance_names_the_commit_from_git_or_from_the_environment(monkeypatch):
    monkeypatch.delenv("MVLIP_GIT_COMMIT", raising=False)
    here = provenance.git_state()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert here["commit"] == head and here["source"] == "git" and isinstance(here["dirty"], bool)
    # the command that sends the code elsewhere declares its commit; that wins over whatever .git is there
    monkeypatch.setenv("MVLIP_GIT_COMMIT", "0123abc")
    monkeypatch.setenv("MVLIP_GIT_DIRTY", "0")
    assert provenance.git_state() == {"commit": "0123abc", "dirty": False, "source": "environment"}

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)  # a copy of the working tree without git
    monkeypatch.delenv("MVLIP_GIT_COMMIT")
    assert provenance.git_state() == {"commit": None, "dirty": None, "source": None}
    monkeypatch.setenv("MVLIP_GIT_COMMIT", "0123abc")
    monkeypatch.setenv("MVLIP_COMMAND", "python -m mvlip_utils.study --profile speed")
    prov = provenance.collect_provenance("cpu")
    assert prov["git_commit"] == "0123abc" and prov["command"] == "python -m mvlip_utils.study --profile speed"
    assert prov["device_name"].startswith("CPU") and prov["driver"] is None
