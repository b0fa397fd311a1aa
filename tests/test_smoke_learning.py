"""The offline default learns: each encoder's smoke run lifts zero-shot accuracy to at least 3x chance."""

import pytest

from mvlip_utils.train import results, loop as train
from mvlip_utils.settings.profiles import get_config


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["mambavision", "swin", "vit"])
def test_smoke_run_reaches_three_times_chance(encoder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"smoke-{encoder}")
    config = get_config("smoke", encoder=encoder, device="cpu", data_dir=str(tmp_path_factory.getbasetemp() / "data"),
                        results_dir=str(tmp / "results"))
    history = train.train_run(config, progress=False)
    metrics = results.load_metrics(results.run_dir(config))
    chance = 1 / metrics["n_classes"]
    assert metrics["n_classes"] == config.generated_classes and metrics["epochs"] == config.epochs
    assert metrics["accuracy"] >= 3 * chance, history.to_string()
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
