"""The committed H200 measurements read back into the book's tables."""

from pathlib import Path

import pandas as pd
import pytest

from mvlip_utils import measurements

H200 = Path(__file__).resolve().parents[1] / "results" / "h200"


def test_scan_ratios_table_holds_the_three_settings_against_their_targets():
    table = measurements.scan_ratios(H200)
    assert list(table["target"]) == [0.9, 0.9, 0.8]
    ratio = table["with scan (img/s)"] / table["scan removed (img/s)"]
    assert ratio.tolist() == pytest.approx(table["ratio"].tolist())
    assert (table["met"] == (table["ratio"] >= table["target"])).all()


def test_model_throughput_has_every_encoder_at_the_papers_and_the_best_settings():
    table = measurements.model_throughput(H200)
    paper = table[table["part"] == "paper"]
    assert set(paper["encoder"]) == {"mambavision", "swin", "vit"}
    assert set(paper["precision"]) == {"fp32"} and set(paper["batch_size"]) == {32}
    assert set(table[table["part"] == "best"]["precision"]) == {"bf16"}
    train = paper[paper["mode"] == "train"].set_index("encoder")["images_per_s"]
    expected = sum(20 * 34745 / train) / 60
    assert measurements.minimum_training_minutes(table) == pytest.approx(expected)


def test_growth_exponents_are_the_log_log_slopes_of_the_sweep():
    sweep = pd.DataFrame({"encoder": ["a"] * 3 + ["b"] * 3, "resolution": [224, 448, 896] * 2,
                          "pixels": [224**2, 448**2, 896**2] * 2, "oom": [False] * 6,
                          "seconds_per_image": [1.0, 4.0, 16.0, 1.0, 16.0, 256.0],
                          "marginal_memory_per_image_bytes": [1.0, 4.0, 16.0] * 2})
    exponents = measurements.growth_exponents(sweep).set_index("encoder")
    assert exponents.loc["a", "time exponent"] == pytest.approx(1.0)
    assert exponents.loc["b", "time exponent"] == pytest.approx(2.0)
    assert len(measurements.growth_exponents(measurements.resolution_sweep(H200))) == 3


def test_epoch_and_eval_loop_tables_read_back():
    epochs = measurements.epoch_projections(H200)
    assert set(epochs["encoder"]) == {"mambavision", "swin", "vit"} and (epochs["projected_study_minutes"] > 0).all()
    loop = measurements.eval_loop(H200)
    assert (loop["ratio_to_model_only"] == loop["images_per_s"] / loop["model_only_images_per_s"]).all()
    assert set(measurements.ddp_speedup(H200)["world_size"]) == {2}


def test_a_missing_measurement_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="scan_ratios.json"):
        measurements.scan_ratios(tmp_path)


def test_resolve_h200_dir_finds_the_repository_folder_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert measurements.resolve_h200_dir(None) == H200
    (tmp_path / "results" / "h200" / "benchmark").mkdir(parents=True)
    assert measurements.resolve_h200_dir(None) == tmp_path / "results" / "h200"
    assert measurements.resolve_h200_dir(H200) == H200
    with pytest.raises(FileNotFoundError, match="h200_dir='nowhere'"):
        measurements.resolve_h200_dir("nowhere")


def test_hardware_note_names_gpu_torch_date_and_random_weights():
    note = measurements.hardware_note(H200)
    assert note.startswith("NVIDIA H200, torch 2.11") and "random weights" in note
    assert measurements.provenance(H200)["date"][:10] in note


def test_encoder_first_moves_only_that_encoders_rows():
    frame = pd.DataFrame({"encoder": ["a", "b", "c", "b"], "x": [1, 2, 3, 4]})
    assert measurements.encoder_first(frame, "b")["x"].tolist() == [2, 4, 1, 3]
    assert measurements.encoder_first(frame, None)["x"].tolist() == [1, 2, 3, 4]


def test_paper_conditions_and_throughput_verdicts_follow_the_measurements():
    table = measurements.paper_conditions(H200)
    model = measurements.model_throughput(H200)
    vit = model[(model.part == "paper") & (model["mode"] == "inference") & (model.encoder == "vit")]
    assert table.loc["vit", "model only, fp32 batch 32"] == pytest.approx(float(vit.images_per_s.iloc[0]))
    relative = measurements.relative_to(table)
    assert (relative.loc["vit"] == 0).all()
    verdicts = measurements.throughput_verdicts(H200)
    assert len(verdicts) == 4
    share = verdicts["MVLIP images/s"] / verdicts["other images/s"]
    assert verdicts["MVLIP / other"].tolist() == pytest.approx(share.tolist())
    for _, row in verdicts.iterrows():
        expected = ("supported" if row["MVLIP vs other (%)"] >= 33 and "ViT" in row.claim else
                    "refuted" if row["MVLIP vs other (%)"] <= 0 else None)
        if expected:
            assert row.verdict.startswith(expected)


def test_study_minutes_sums_the_encoders_per_setting():
    epochs = pd.DataFrame({"setting": ["s"] * 3 + ["t"] * 3, "encoder": ["vit", "mambavision", "swin"] * 2,
                           "projected_study_minutes": [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]})
    table = measurements.study_minutes(epochs)
    assert list(table.index) == ["s", "t"]
    assert list(table.columns[:3]) == ["mambavision", "swin", "vit"]
    assert table["total"].tolist() == [6.0, 60.0]
    assert table["total (h)"].tolist() == pytest.approx([0.1, 1.0])
