"""The training loop and the zero-shot evaluation: the profiles' protocol, the metrics, one validation pass,
what learns, the seeds of one process (train_seeds), the training steps and the uint8 cache against the
eager run from image files, and that each tower learns on the generated data.

The reference runs are the session's ``finished_runs`` (seeds 0 and 1 of a tiny vit run, trained by
``train_seeds``); the runs here train on their data, most with their text tower built once for the module.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, top_k_accuracy_score

from mvlip_utils.models import towers
from mvlip_utils.settings import profiles
from mvlip_utils.settings.profiles import get_config
from mvlip_utils.train import experiment as exp, loop, run_folder as rf
from mvlip_utils.train.evaluate import classification_metrics


@pytest.fixture(scope="module")
def shared(finished_runs):
    """The finished runs' data and frozen text tower with its prompt cache, built once for this module."""
    inputs: dict = {}
    exp.build_experiment(finished_runs["config"], progress=False, shared=inputs)
    return inputs


def run_config(finished_runs, tmp_path, seed: int = 0, **overrides):
    """A finished run's configuration in a results folder of its own."""
    return finished_runs["config"].replace(seed=seed, results_dir=str(tmp_path / "results"), **overrides)


def finished_history(finished_runs, seed: int = 0) -> pd.DataFrame:
    return rf.load_history(rf.run_dir(finished_runs["config"].replace(seed=seed)))


# ------------------------------------------------------------------------------------------- settings
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
        towers.check_encoder("resnet")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        get_config("smoke", epoch=3)
    with pytest.raises(ValueError, match="lr=-1"):
        get_config("smoke", lr=-1)
    with pytest.raises(ValueError, match="profile='big'"):
        get_config("big")


def test_seeds_are_a_parameter_and_each_run_is_one_seed():
    assert (get_config("smoke").seeds, get_config("paper").seeds, get_config("speed").seeds) == ([0, 1, 2], [0, 1, 2], [0])
    assert "seeds" in profiles.user_fields(profiles.StudyConfig)
    assert "seed" not in profiles.user_fields(profiles.StudyConfig)  # set by the code: the run's own
    config = get_config("smoke", seeds=[3, 1])
    assert config.seed == 3 and [(c.seed, c.seeds) for c in config.runs()] == [(3, [3, 1]), (1, [3, 1])]
    for bad in ([], [1, 1], [-1], ["0"], [True]):
        with pytest.raises(ValueError, match="parameter seeds="):
            get_config("smoke", seeds=bad)
    # which seeds an edition has does not change what one run computes; a missing saved value is None
    assert "seeds" in profiles.RUN_IRRELEVANT and "seed" not in profiles.RUN_IRRELEVANT
    saved = config.runs()[1].to_dict()
    assert profiles.changed_parameters({**saved, "seeds": [1]}, config.runs()[1]) == {}
    assert profiles.changed_parameters(saved, config.runs()[0]) == {"seed": (1, 3)}
    del saved["deterministic"]
    assert profiles.changed_parameters(saved, config.runs()[1]) == {"deterministic": (None, False)}


# -------------------------------------------------------------------------------------------- metrics
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
    assert metrics["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, predictions))
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
                                "precision_macro", "recall_macro", "f1_macro",
                                "mean_per_class_recall"}  # no top-k under another name
    assert np.isnan(classification_metrics([0, 1, 2], np.eye(4)[[0, 1, 2]], n_classes=4)["top5"])


def test_one_validation_pass_gives_the_loss_and_the_metrics_of_two(finished_runs, shared, tmp_path):
    """loop.validate computes the validation contrastive loss from the zero-shot pass's own image features:
    the same numbers as a separate contrastive pass and a separate zero-shot evaluation."""
    config = run_config(finished_runs, tmp_path)
    experiment = exp.build_experiment(config, progress=False, shared=shared)
    loss_fn = loop.ClipLoss()
    val_loss, evaluation = loop.validate(experiment, loss_fn, progress=False)
    separate = exp.evaluate_experiment(experiment, progress=False)
    for key in rf.METRIC_KEYS:
        assert evaluation[key] == pytest.approx(separate[key], rel=1e-6, nan_ok=True), key
    for key in ("label", "prediction", "correct"):
        np.testing.assert_array_equal(evaluation["per_image"][key], separate["per_image"][key])
    np.testing.assert_allclose(evaluation["per_image"]["loss"], separate["per_image"]["loss"], rtol=1e-6, atol=1e-6)
    assert evaluation["zeroshot_loss"] == pytest.approx(np.mean(separate["per_image"]["loss"]), rel=1e-6)
    draws = loop._epoch_generator(config.seed, 0, stream=2)
    losses, sizes = [], []
    experiment.model.eval()
    with torch.no_grad():
        for images, labels in exp.eval_loader(experiment):
            templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
            losses.append(loop.contrastive_loss(experiment, loss_fn, images, labels, templates).item())
            sizes.append(len(labels))
    assert val_loss == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)


# ------------------------------------------------------------------------------------------ training
def test_only_the_image_tower_learns(finished_runs, shared, tmp_path):
    config = run_config(finished_runs, tmp_path, epochs=1)
    experiment = exp.build_experiment(config, progress=False, shared=shared)
    text_before = {k: v.clone() for k, v in experiment.model.text.state_dict().items()}
    visual_before = {k: v.clone() for k, v in experiment.model.visual.state_dict().items()}
    optimizer, scheduler = exp.make_optimizer(experiment)
    loop.train_one_epoch(experiment, optimizer, scheduler, loop.ClipLoss(), epoch=1, progress=False)
    assert all(torch.equal(v, experiment.model.text.state_dict()[k]) for k, v in text_before.items())
    assert any(not torch.equal(v, experiment.model.visual.state_dict()[k]) for k, v in visual_before.items())
    assert experiment.model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    # cosine annealing stepped per batch over all steps: after the only epoch the lr reached its minimum
    assert scheduler.last_epoch == len(experiment.train_set) // config.batch_size == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_seeds_of_one_process_share_the_data_and_the_text_tower_and_train_apart(finished_runs, tmp_path,
                                                                                   monkeypatch):
    built = {"text towers": 0, "datasets": 0}
    real_text, real_splits = exp.create_text_tower, exp.data_mod.load_splits

    def counted_text(*args, **kwargs):
        built["text towers"] += 1
        return real_text(*args, **kwargs)

    def counted_splits(*args, **kwargs):
        built["datasets"] += 1
        return real_splits(*args, **kwargs)

    monkeypatch.setattr(exp, "create_text_tower", counted_text)
    monkeypatch.setattr(exp.data_mod, "load_splits", counted_splits)
    config = run_config(finished_runs, tmp_path, epochs=1, seeds=[0, 1])
    rows = []
    histories = loop.train_seeds(config, progress=False, on_epoch_end=rows.append)
    assert built == {"text towers": 1, "datasets": 1}
    assert list(histories) == [0, 1] and [(r["seed"], r["epoch"]) for r in rows] == [(0, 1), (1, 1)]
    assert histories[0].train_loss.iloc[0] != histories[1].train_loss.iloc[0]
    for seed in (0, 1):
        run = rf.run_dir(config.replace(seed=seed))
        assert run.name == f"seed-{seed}" and rf.run_state(run) == ("finished", "1 of 1 epochs")
        assert rf.load_config(run)["seed"] == seed
        pd.testing.assert_frame_equal(rf.load_history(run), histories[seed])
    # the two seeds' runs read the same images (the data does not depend on the seed)
    assert rf.load_config(rf.run_dir(config))["data_root"] == rf.load_config(rf.run_dir(config.replace(seed=1)))["data_root"]
    # the prompt cache is kept on disk beside the data, for the next process
    assert len(list((exp.Path(config.data_dir) / "cache").glob("text-features-*.pt"))) == 1


def test_a_seed_trained_alone_is_the_seed_trained_after_another(finished_runs, tmp_path):
    """A seed's run depends on its seed only: seed 1 trained alone in a fresh process state (its own data and
    text tower) is bit for bit the seed 1 that train_seeds trained after seed 0 with the shared ones."""
    config = run_config(finished_runs, tmp_path, seed=1)
    history = loop.train_run(config, progress=False)
    pd.testing.assert_frame_equal(history, finished_history(finished_runs, 1), check_exact=True)
    models = [torch.load(rf.run_dir(c) / rf.CHECKPOINT, weights_only=True)["model"]
              for c in (config, finished_runs["config"].replace(seed=1))]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[1])


def test_a_run_with_the_fused_step_ends_where_the_eager_run_ends(finished_runs, shared, tmp_path):
    fused = loop.train_run(run_config(finished_runs, tmp_path, train_step="fused"), progress=False, shared=shared)
    eager = finished_history(finished_runs)
    np.testing.assert_allclose(fused.train_loss, eager.train_loss, rtol=1e-4)
    np.testing.assert_allclose(fused.val_zeroshot_loss, eager.val_zeroshot_loss, rtol=1e-4)


def test_the_compiled_steps_train_through_torch_compile_in_their_mode(finished_runs, tmp_path, monkeypatch):
    """compiled: torch.compile's default mode; graphed: reduce-overhead (CUDA graphs on a GPU); eager and
    fused: the model's own tower. The graphed step trains through the compiled tower to the eager step's
    losses; here compiled with the aot_eager backend (dynamo's graphs and AOTAutograd without inductor's code
    generation, which takes about a minute on a 2-core CPU; the GPU tier compiles with inductor)."""
    from mvlip_utils.measure import benchmark_suite

    modes = []
    real_compile = torch.compile

    def recording_compile(model, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", recording_compile)
    tower = torch.nn.Linear(2, 2)
    config = run_config(finished_runs, tmp_path)
    for step in ("eager", "fused"):
        assert exp.training_tower(config.replace(train_step=step), tower) is None
    assert modes == []
    exp.training_tower(config.replace(train_step="compiled"), tower)
    exp.training_tower(config.replace(train_step="graphed"), tower)
    assert modes == [None, "reduce-overhead"]
    check = benchmark_suite.train_step_check(config, images=32, epochs=2, steps=("eager", "graphed"))
    eager, graphed = check["variants"]
    assert graphed.get("error") is None and modes[-1] == "reduce-overhead"
    assert graphed["within_tolerance"] and len(graphed["losses"]) == 2 and graphed["losses"] != eager["losses"][::-1]


def test_training_from_the_uint8_cache_matches_training_from_image_files(finished_runs, tmp_path):
    config = run_config(finished_runs, tmp_path, data_cache=True)
    from_cache = loop.train_run(config, progress=False)
    cache_files = sorted(p.name for p in (exp.Path(config.data_dir) / "cache").glob("generated-*px.pt"))
    assert [name.split("-")[-2] for name in cache_files] == ["train", "val"]
    # the same input tensors: the very history of the run from the files
    pd.testing.assert_frame_equal(from_cache, finished_history(finished_runs), check_exact=True)


def test_missing_data_folder_is_named(finished_runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="data='/nowhere/imagenet-mini'"):
        loop.train_run(run_config(finished_runs, tmp_path, data="/nowhere/imagenet-mini"), progress=False)
    assert not (tmp_path / "results").exists()


def test_the_paper_reference_matches_the_authors_logs():
    import json

    from mvlip_utils.settings.paper import paper_reference

    reference = paper_reference()
    logs = reference["authors_logs"]
    final = logs[logs.epoch == 20].set_index("encoder")
    for encoder in ("mambavision", "swin"):
        for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted"):
            assert final.loc[encoder, key] == pytest.approx(reference["table1_final_epoch"][encoder][key])
    improvement = 100 * (final.loc["mambavision", "accuracy"] / final.loc["swin", "accuracy"] - 1)
    assert improvement == pytest.approx(reference["table1_improvement_percent"]["accuracy"], abs=0.01)
    json.dumps({k: v for k, v in reference.items() if k != "authors_logs"})


@pytest.mark.parametrize("encoder", ["mambavision", "swin", "vit"])
def test_each_tower_learns_on_the_generated_data(finished_runs, shared, tmp_path, encoder):
    """Six epochs of batch 8 on the finished runs' 4 classes x 16 images lower the training loss and lift
    zero-shot accuracy to at least twice chance, for each paper tower at its smoke size."""
    config = run_config(finished_runs, tmp_path, encoder=encoder, epochs=6, batch_size=8)
    history = loop.train_run(config, progress=False, shared=shared)
    metrics = rf.load_metrics(rf.run_dir(config))
    assert metrics["n_classes"] == 4 and metrics["epochs"] == 6
    assert history.train_loss.iloc[-1] < 0.9 * history.train_loss.iloc[0], history.to_string()
    assert metrics["accuracy"] >= 2 / metrics["n_classes"], history.to_string()
