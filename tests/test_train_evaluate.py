"""Training loop, checkpoints and resume, results files, zero-shot metrics."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, top_k_accuracy_score

from mvlip_utils.train import experiment as exp, results, run_folder, loop as train
from mvlip_utils.models import timm_towers, towers
from mvlip_utils.train.evaluate import classification_metrics
from mvlip_utils.settings.profiles import get_config


def tiny_config(tmp_path, **overrides):
    values = dict(encoder="vit", epochs=2, generated_classes=4, generated_train_per_class=16,
                  generated_val_per_class=4, batch_size=16, image_size=32, device="cpu",
                  data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"))
    values.update(overrides)
    return get_config("smoke", **values)


def test_profiles_hold_the_papers_protocol_and_name_bad_parameters():
    paper = get_config("paper")
    # "fp32-tf32conv" is PyTorch's default float32 mode, what the paper's "FP32" ran as
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay, paper.grad_clip, paper.temperature,
            paper.precision, paper.image_size, paper.model_size, paper.pretrained) == \
        (20, 32, 1e-4, 0.01, 1.0, 0.07, "fp32-tf32conv", 224, "paper", True)
    assert not paper.train_text and not paper.learn_temperature
    # speed: the paper's architectures, protocol and 224 px, random weights, generated JPEGs, a GPU
    speed = get_config("speed")
    assert (speed.model_size, speed.image_size, speed.batch_size, speed.lr, speed.precision, speed.pretrained,
            speed.data, speed.generated_classes, speed.device) == \
        ("paper", 224, 32, 1e-4, "fp32-tf32conv", False, "generated-imagenet", 1000, "cuda")
    # ... trained with the paper profile's step and numerics, on at least 10,000 images an epoch (whole batches)
    assert (speed.train_step, speed.precision, speed.data_cache) == (paper.train_step, paper.precision, paper.data_cache)
    assert speed.generated_classes * speed.generated_train_per_class // speed.batch_size * speed.batch_size >= 10_000
    with pytest.raises(ValueError, match="train_step='jit'"):
        get_config("smoke", train_step="jit")
    with pytest.raises(ValueError, match="encoder=''"):  # the name's form; timm's registry is the models'
        get_config("smoke", encoder="")
    with pytest.raises(ValueError, match="encoder='resnet'.*closest timm names"):
        timm_towers.check_encoder("resnet")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        get_config("smoke", epoch=3)
    with pytest.raises(ValueError, match="lr=-1"):
        get_config("smoke", lr=-1)
    with pytest.raises(ValueError, match="profile='big'"):
        get_config("big")


def test_classification_metrics_are_sklearns_weighted_and_macro():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 200)
    logits = rng.normal(size=(200, 6)) + 2.0 * np.eye(6)[labels] * rng.random((200, 1))
    predictions = logits.argmax(1)
    metrics = classification_metrics(labels, logits)
    assert metrics["accuracy"] == pytest.approx((predictions == labels).mean())
    assert metrics["recall_weighted"] == pytest.approx(metrics["accuracy"])  # why Table 1's recall = accuracy
    assert metrics["precision_weighted"] == pytest.approx(precision_score(labels, predictions, average="weighted"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert metrics["recall_macro"] == pytest.approx(recall_score(labels, predictions, average="macro"))
    top5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
    assert metrics["top5"] == pytest.approx(top5)
    assert metrics["top5"] >= metrics["accuracy"]


def test_top5_is_top5_with_ten_classes_and_not_reported_with_five_or_fewer():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 300)
    logits = rng.normal(size=(300, 10)) + 1.5 * np.eye(10)[labels] * rng.random((300, 1))
    top5 = classification_metrics(labels, logits)["top5"]
    assert top5 == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=np.arange(10)))
    assert top5 == pytest.approx(np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)]))
    assert top5 != pytest.approx(top_k_accuracy_score(labels, logits, k=3, labels=np.arange(10)))
    for n_classes in (2, 4, 5):  # top-5 of five classes or fewer is 1 by definition: not a number to report
        labels = rng.integers(0, n_classes, 50)
        metrics = classification_metrics(labels, rng.normal(size=(50, n_classes)))
        assert np.isnan(metrics["top5"]) and np.isfinite(metrics["accuracy"])
        assert set(metrics) == {"accuracy", "top5", "precision_weighted", "recall_weighted", "f1_weighted",
                                "precision_macro", "recall_macro", "f1_macro"}  # no top-k under another name
    assert np.isnan(classification_metrics([0, 1, 2], np.eye(4)[[0, 1, 2]], n_classes=4)["top5"])


def test_json_is_strict_and_nan_comes_back_from_metrics_and_history(tmp_path):
    results.write_json(tmp_path / "metrics.json", {"accuracy": 0.25, "top5": float("nan"), "n_classes": 4,
                                                   "loss": np.float32("inf"), "nested": [np.nan, 1.0]})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"accuracy": 0.25, "top5": None, "n_classes": 4, "loss": None, "nested": [None, 1.0]}
    metrics = results.load_metrics(tmp_path)
    assert np.isnan(metrics["top5"]) and np.isnan(metrics["loss"]) and metrics["accuracy"] == 0.25
    results.write_history(tmp_path, [{"epoch": 1, "accuracy": 0.5, "top5": float("nan")}])
    assert np.isnan(results.load_history(tmp_path).top5.iloc[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    config = tiny_config(tmp_path)
    return tmp_path, config, train.train_run(config, progress=False)


def test_a_run_writes_every_results_file_with_the_documented_keys(finished_run):
    tmp_path, config, history = finished_run
    run = results.run_dir(config)
    assert run == tmp_path / "results" / "smoke" / "vit"
    assert list(history.columns) == results.HISTORY_COLUMNS and list(history.epoch) == [1, 2]
    on_disk = results.load_history(run)
    assert list(on_disk.columns) == results.HISTORY_COLUMNS
    pd.testing.assert_frame_equal(on_disk, history, check_dtype=False)
    metrics = results.load_metrics(run)
    assert set(results.METRIC_KEYS) <= set(metrics)
    assert metrics["n_val"] == 16 and metrics["n_classes"] == 4 and metrics["epochs"] == 2
    assert metrics["accuracy"] == pytest.approx(history.accuracy.iloc[-1])
    # four classes: no top-5 (null in metrics.json, NaN when read back and in the history)
    assert json.loads((run / "metrics.json").read_text())["top5"] is None
    assert np.isnan(metrics["top5"]) and history.top5.isna().all() and on_disk.top5.isna().all()
    saved = results.load_config(run)
    assert saved["encoder"] == "vit" and saved["seed"] == 0 and saved["versions"]["torch_build"] == torch.__version__
    assert saved["parameters"]["text_tower"]["trainable"] == 0
    assert saved["parameters"]["image_tower"]["trainable"] == saved["parameters"]["image_tower"]["total"]
    per_class = pd.read_csv(run / "per_class.csv")
    assert len(per_class) == 4 and per_class.n.sum() == 16
    confusion = pd.read_csv(run / "confusion.csv", index_col=0)
    assert confusion.values.sum() == 16 and np.trace(confusion.values) / 16 == pytest.approx(metrics["accuracy"])
    assert (run / run_folder.CHECKPOINT).is_file()
    assert np.isfinite(history[["train_loss", "val_loss", "val_zeroshot_loss"]].values).all()
    timings = pd.read_csv(run / "timings.csv")
    assert list(timings.columns) == results.TIMING_COLUMNS and list(timings.epoch) == [1, 2]
    assert (timings.train_images == 64).all() and (timings.val_images == 16).all()  # 4 batches of 16, 16 val
    assert (timings[["train_seconds", "validation_seconds", "checkpoint_seconds", "setup_seconds"]] > 0).all().all()
    # every epoch's background checkpoint write is timed (the last one once the run waited for it at its end),
    # and so is the wait for each epoch's first batch
    assert (timings.checkpoint_write_seconds > 0).all() and (timings.loader_start_seconds > 0).all()
    assert (timings.epoch_seconds >= timings.train_seconds + timings.validation_seconds).all()


def test_one_validation_pass_gives_the_loss_and_the_metrics_of_two(finished_run):
    """train.validate computes the validation contrastive loss from the zero-shot pass's own image features:
    the same numbers as a separate contrastive pass and a separate zero-shot evaluation."""
    _, config, _ = finished_run
    experiment = exp.build_experiment(config, progress=False)
    loss_fn = train.ClipLoss()
    val_loss, evaluation = train.validate(experiment, loss_fn, progress=False)
    separate = exp.evaluate_experiment(experiment, progress=False)
    np.testing.assert_allclose(evaluation["logits"], separate["logits"], rtol=1e-6, atol=1e-6)
    draws = train._epoch_generator(config.seed, 0, stream=2)
    losses, sizes = [], []
    experiment.model.eval()
    with torch.no_grad():
        for images, labels in exp.eval_loader(experiment):
            templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
            losses.append(train.contrastive_loss(experiment, loss_fn, images, labels, templates).item())
            sizes.append(len(labels))
    assert val_loss == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)


def test_the_fused_training_step_gives_the_eager_steps_losses(tmp_path):
    """benchmark_suite.train_step_check: two short epochs from the same start with each step; fused AdamW
    changes only the order of floating-point work, so the per-epoch losses agree within 1e-4."""
    from mvlip_utils.measure import benchmark_suite

    config = tiny_config(tmp_path, encoder="mambavision", generated_train_per_class=8)
    check = benchmark_suite.train_step_check(config, images=32, epochs=2)
    assert [v["train_step"] for v in check["variants"]] == ["eager", "fused"]
    eager, fused = check["variants"]
    assert len(eager["losses"]) == 2 and eager["losses"] != fused["losses"][::-1]
    assert fused["max_rel_loss_difference"] <= benchmark_suite.STEP_CHECK_TOLERANCE and fused["within_tolerance"]
    assert eager["speedup"] == 1.0 and fused["images_per_s"] > 0
    assert results.read_json(results.run_dir(config) / "step_check.json")["variants"][1]["train_step"] == "fused"
    # a run trained with the fused step ends where the eager run ends
    runs = [train.train_run(tiny_config(tmp_path / step, epochs=1, train_step=step), progress=False)
            for step in ("eager", "fused")]
    np.testing.assert_allclose(runs[0].train_loss, runs[1].train_loss, rtol=1e-4)


def test_the_step_check_starts_each_step_from_the_same_text_tower(tmp_path):
    """With train_text the eager step trains the text tower: the next step starts from the run's own."""
    from mvlip_utils.measure import benchmark_suite

    config = tiny_config(tmp_path, train_text=True, generated_train_per_class=4)
    check = benchmark_suite.train_step_check(config, images=16, epochs=1, steps=("eager", "eager"))
    first, second = check["variants"]
    assert second["losses"] == first["losses"]


def test_only_the_image_tower_learns(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    experiment = exp.build_experiment(config, progress=False)
    text_before = {k: v.clone() for k, v in experiment.model.text.state_dict().items()}
    visual_before = {k: v.clone() for k, v in experiment.model.visual.state_dict().items()}
    optimizer, scheduler = exp.make_optimizer(experiment)
    train.train_one_epoch(experiment, optimizer, scheduler, train.ClipLoss(), epoch=1, progress=False)
    assert all(torch.equal(v, experiment.model.text.state_dict()[k]) for k, v in text_before.items())
    assert any(not torch.equal(v, experiment.model.visual.state_dict()[k]) for k, v in visual_before.items())
    assert experiment.model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    # cosine annealing stepped per batch over all steps: after the only epoch the lr reached its minimum
    assert scheduler.last_epoch == len(experiment.train_set) // config.batch_size
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_rerun_with_the_same_seed_is_identical(finished_run, tmp_path):
    _, config, first = finished_run
    second = train.train_run(config.replace(results_dir=str(tmp_path / "again")), resume=False, progress=False)
    pd.testing.assert_frame_equal(first, second)


def test_an_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    straight = tiny_config(tmp_path, encoder="mambavision", epochs=2, results_dir=str(tmp_path / "straight"))
    expected = train.train_run(straight, progress=False)

    interrupted = tiny_config(tmp_path, encoder="mambavision", epochs=2, results_dir=str(tmp_path / "resumed"))
    partial = train.train_run(interrupted, progress=False, stop_after_epoch=1)
    run = results.run_dir(interrupted)
    assert list(partial.epoch) == [1] and not results.is_finished(run)
    # the process dies here; a new one picks the run up from its last complete epoch
    resumed = train.train_run(interrupted, progress=False)
    pd.testing.assert_frame_equal(resumed, expected, rtol=1e-6, atol=1e-7)
    timing = {"eval_images_per_s"}
    resumed_metrics = {k: v for k, v in results.load_metrics(run).items() if k not in timing}
    expected_metrics = {k: v for k, v in results.load_metrics(results.run_dir(straight)).items() if k not in timing}
    assert resumed_metrics == pytest.approx(expected_metrics, rel=1e-6, nan_ok=True)  # top5: NaN (4 classes)


def test_resume_refuses_a_checkpoint_from_other_parameters(tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    train.train_run(config, progress=False, stop_after_epoch=1)
    with pytest.raises(run_folder.RunMismatchError, match=r"lr 0.001 \(saved\) vs 0.0005 \(now\)"):
        train.train_run(config.replace(lr=5e-4), progress=False)


def test_resume_refuses_a_checkpoint_of_another_tower_architecture(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=2)
    train.train_run(config, progress=False, stop_after_epoch=1)
    monkeypatch.setitem(towers.SMOKE_OVERRIDES, "vit", {**towers.SMOKE_OVERRIDES["vit"], "depth": 1})
    with pytest.raises(ValueError, match="another vit tower"):
        train.train_run(config, progress=False)


def test_resume_accepts_a_checkpoint_written_before_a_parameter_existed(tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    train.train_run(config, progress=False, stop_after_epoch=1)
    path = results.run_dir(config) / run_folder.CHECKPOINT
    state = torch.load(path, weights_only=True)
    del state["config"]["data_cache"]  # as saved by a version without that parameter (its default)
    torch.save(state, path)
    history = train.train_run(config, progress=False)
    assert list(history.epoch) == [1, 2]


def test_a_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=2)
    train.train_run(config, progress=False, stop_after_epoch=1)
    run = results.run_dir(config)
    good = torch.load(run / run_folder.CHECKPOINT, weights_only=True)
    original = train.contrastive_loss

    def exploding(*args, **kwargs):
        return original(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train, "contrastive_loss", exploding)
    with pytest.raises(train.NonFiniteLossError, match="epoch 2, step 0") as info:
        train.train_run(config, progress=False)
    assert str(run / run_folder.CHECKPOINT) in str(info.value)
    kept = torch.load(run / run_folder.CHECKPOINT, weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())
    assert not results.is_finished(run)


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data='/nowhere/imagenet-mini'"):
        train.train_run(tiny_config(tmp_path, data="/nowhere/imagenet-mini"), progress=False)


def test_results_files_are_plain_json_and_paper_reference_matches_the_authors_logs():
    reference = results.paper_reference()
    logs = reference["authors_logs"]
    final = logs[logs.epoch == 20].set_index("encoder")
    for encoder in ("mambavision", "swin"):
        for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted"):
            assert final.loc[encoder, key] == pytest.approx(reference["table1_final_epoch"][encoder][key])
    improvement = 100 * (final.loc["mambavision", "accuracy"] / final.loc["swin", "accuracy"] - 1)
    assert improvement == pytest.approx(reference["table1_improvement_percent"]["accuracy"], abs=0.01)
    json.dumps({k: v for k, v in reference.items() if k != "authors_logs"})


def test_training_from_the_uint8_cache_matches_training_from_image_files(finished_run, tmp_path):
    _, config, from_files = finished_run
    cached = config.replace(data_cache=True, results_dir=str(tmp_path / "cached"))
    from_cache = train.train_run(cached, progress=False)
    cache_files = sorted(p.name for p in (type(tmp_path)(config.data_dir) / "cache").glob("*.pt"))
    assert [name.split("-")[-2] for name in cache_files] == ["train", "val"]
    pd.testing.assert_frame_equal(from_cache, from_files, rtol=1e-5, atol=1e-6)


def test_the_compiled_steps_train_through_torch_compile_in_their_mode(tmp_path, monkeypatch):
    """compiled: torch.compile's default mode; graphed: reduce-overhead (CUDA graphs on a GPU); eager and
    fused: the model's own tower. On the CPU the graphed step gives the eager step's losses."""
    from mvlip_utils.measure import benchmark_suite

    modes = []
    real_compile = torch.compile

    def recording_compile(model, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(model, mode=mode, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    tower = torch.nn.Linear(2, 2)
    for step in ("eager", "fused"):
        assert exp.training_tower(tiny_config(tmp_path, train_step=step), tower) is None
    assert modes == []
    exp.training_tower(tiny_config(tmp_path, train_step="compiled"), tower)
    exp.training_tower(tiny_config(tmp_path, train_step="graphed"), tower)
    assert modes == [None, "reduce-overhead"]
    check = benchmark_suite.train_step_check(tiny_config(tmp_path, generated_train_per_class=8), images=32, epochs=2,
                                             steps=("eager", "graphed"))
    graphed = check["variants"][1]
    assert graphed.get("error") is None and modes[-1] == "reduce-overhead"
    assert graphed["within_tolerance"] and graphed["losses"] != check["variants"][0]["losses"][::-1]
