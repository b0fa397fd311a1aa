"""The GPU test tier: ``make test-gpu`` (``pytest -m gpu``). Every test here skips without CUDA, so the CPU
suite is unchanged; on a GPU machine the tier uses every visible GPU. What it runs:

a. the whole study on the ``cuda-smoke`` profile (tiny towers, generated data, CUDA) through papermill with
   ``--gpus``: three chains, shared round-robin over the visible GPUs (all three on GPU 0 with one GPU), in
   a temporary root (its editions never reach the repository's book/ or results/);
b. the compiled and graphed training steps, from that study's step checks: they run and give the eager
   step's per-epoch losses within ``benchmark_suite.STEP_CHECK_TOLERANCE``; and the training chapter's
   deterministic-mode measurement (its repeats bit-identical);
c. deterministic mode (``--deterministic true``) through the train command line: two runs bit-identical, and
   a run killed with SIGKILL in the middle of epoch 2 and resumed equal to the uninterrupted one bit for bit
   (history, metrics, model and optimizer state), for the three tiny towers with the eager and the graphed
   (the paper's) step; ``MVLIP_GPU_TIER_STEPS="eager fused compiled graphed"`` checks every step;
d. the compiled selective scan against eager: tests/test_ssm.py's tests marked ``gpu``;
e. the path of a user with the real inputs: the ``paper`` profile's chapters (02_train, 03_evaluate,
   04_benchmark) for one encoder (``MVLIP_GPU_TIER_PAPER_ENCODERS``, default vit) through papermill, the
   towers' weights from files made in each release format (MambaVision's .pth.tar, Swin's safetensors, the
   CLIP file as open_clip .safetensors for the image tower and .bin for the text tower) given by the README's
   environment variables, on a small generated folder of wnid classes, one short epoch, the benchmark
   chapter's repeats and resolutions cut down.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from mvlip_utils.settings.profiles import ENCODERS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]


def gpu_ids() -> list[str]:
    """The visible GPUs as the indices a child's CUDA_VISIBLE_DEVICES takes (the machine's own numbering)."""
    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def spread(n: int) -> list[str]:
    """``n`` jobs round-robin over the visible GPUs (several on one GPU when there are fewer GPUs)."""
    gpus = gpu_ids()
    return [gpus[i % len(gpus)] for i in range(n)]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path (the kernels and the chains
    import its mvlip_utils)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def project_env():
    with pytest.MonkeyPatch.context() as mp:
        for key, value in child_env().items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        yield


def study_root(tmp: Path) -> Path:
    """A root for the study runner: the notebooks, nothing else (book/ and results/ are written under it)."""
    shutil.copytree(ROOT / "notebooks", tmp / "notebooks")
    return tmp


def html_of(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n".join(out.get("data", {}).get("text/html", "") for cell in nb.cells for out in cell.get("outputs", []))


# ----------------------------------------------------------------- a. the cuda-smoke study, chains on GPUs
@pytest.fixture(scope="module")
def cuda_smoke_study(tmp_path_factory, project_env):
    from mvlip_utils.study import runner as study

    root = study_root(tmp_path_factory.mktemp("cuda-smoke"))
    overrides = {"results_dir": str(root / "results"), "data_dir": str(root / "data")}
    gpus = spread(len(ENCODERS))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    started = time.perf_counter()
    report = study.run_study("cuda-smoke", list(ENCODERS), overrides, book=False, root=root, gpus=gpus, log=log)
    print(f"[gpu tier] the cuda-smoke study on gpus {gpus}: {time.perf_counter() - started:.1f} s", flush=True)
    return {"root": root, "results": root / "results" / "cuda-smoke", "gpus": gpus, "report": report, "lines": lines}


def test_the_cuda_smoke_study_runs_through_papermill_with_its_chains_on_the_gpus(cuda_smoke_study):
    from mvlip_utils.settings import notebooks
    from mvlip_utils.train import run_folder

    s = cuda_smoke_study
    root = s["root"]
    assert s["report"]["failed"] == []
    executed = {label for label, status, _ in s["report"]["steps"] if status == "executed"}
    assert {f"cuda-smoke: {nb} [{e}]" for e in ENCODERS for nb in notebooks.PER_ENCODER} <= executed
    for step in notebooks.plan(list(ENCODERS), "cuda-smoke") + [notebooks.Step(notebooks.FINDINGS)]:
        assert step.output(root / "book").is_file(), step.label
    assert not (root / "book" / "recorded").exists()  # a test profile's edition is never recorded
    for encoder, gpu in zip(ENCODERS, s["gpus"]):
        assert any(line.startswith(f"[{encoder} on gpu {gpu}]") for line in s["lines"]), (encoder, gpu)
        run = s["results"] / encoder / "seed-0"
        config = run_folder.load_config(run)
        assert config["resolved_device"].startswith("cuda") and config["profile"] == "cuda-smoke"
        assert run_folder.run_state(run) == ("finished", "2 of 2 epochs")
        bench = run_folder.read_benchmark(run.parent / "benchmark.json")
        assert bench["provenance"]["gpu_name"] and any(r["kind"] == "model_only" for r in bench["records"])


# ------------------------------------------------------------ b. the compiled and graphed steps, and cost
@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_compiled_and_graphed_steps_give_the_eager_losses(cuda_smoke_study, encoder):
    from mvlip_utils.data.files import read_json
    from mvlip_utils.measure.benchmark_suite import STEP_CHECK_TOLERANCE

    check = read_json(cuda_smoke_study["results"] / encoder / "step_check.json")
    variants = {v["train_step"]: v for v in check["variants"]}
    assert list(variants) == ["eager", "fused", "compiled", "graphed"]
    for step, v in variants.items():
        assert not v.get("error"), f"{encoder} {step}: {v.get('error')}"
        assert v["losses"] and all(math.isfinite(x) for x in v["losses"]), (step, v["losses"])
        assert v["max_rel_loss_difference"] <= STEP_CHECK_TOLERANCE, (step, v["losses"], variants["eager"]["losses"])
        assert v["images_per_s"] > 0


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_training_chapter_measures_deterministic_mode(cuda_smoke_study, encoder):
    from mvlip_utils.data.files import read_json

    record = read_json(cuda_smoke_study["results"] / encoder / "step_check.json")["deterministic"]
    assert not record.get("error"), record.get("error")
    assert record["bit_identical"] is True, record["losses"]
    assert record["deterministic_images_per_s"] > 0 and record["default_images_per_s"] > 0
    print(f"[gpu tier] {encoder} {record['train_step']}: deterministic {record['deterministic_images_per_s']:.1f} "
          f"images/s against {record['default_images_per_s']:.1f} by default (x{record['relative_speed']:.2f})")
    chapter = cuda_smoke_study["root"] / "book" / "executed" / "cuda-smoke" / encoder / "02_train.ipynb"
    assert 'id="deterministic"' in html_of(chapter)  # the chapter shows the record


# ------------------------------------------------------- c. deterministic runs: repeat, SIGKILL and resume
KILL_STEPS = tuple(os.environ.get("MVLIP_GPU_TIER_STEPS", "eager graphed").split())
TINY = ["--profile", "cuda-smoke", "--deterministic", "true", "--epochs", "3", "--seeds", "0", "--generated-classes", "4",
        "--generated-train-per-class", "16", "--generated-val-per-class", "4", "--batch-size", "16",
        "--image-size", "64", "--quiet"]
STEPS_PER_EPOCH = 4  # 64 training images, batch 16
# the killed run stops inside its loss function at this call: epoch 2, after one of its steps has updated the tower
BLOCK_AT_CALL = STEPS_PER_EPOCH + 2
BLOCKING_TRAIN = """
import os, sys, time
from mvlip_utils.train import loop as train
original, calls = train.contrastive_loss, [0]
def blocking(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["MVLIP_TEST_BLOCK_AT"]):
        open(os.environ["MVLIP_TEST_BLOCKED"], "w").close()
        time.sleep(3600)  # killed here with SIGKILL
    return original(*args, **kwargs)
train.contrastive_loss = blocking
sys.exit(train.main(sys.argv[1:]))
"""


@dataclass
class KillResumeCase:
    encoder: str
    step: str
    gpu: str
    folder: Path
    procs: dict = field(default_factory=dict)
    killed_after_epoch: int | None = None
    problem: str | None = None

    def args(self, name: str) -> list[str]:
        return [*TINY, "--encoder", self.encoder, "--train-step", self.step, "--data-dir", str(self.folder.parent / "data"),
                "--results-dir", str(self.folder / name)]

    def run(self, name: str) -> Path:
        return self.folder / name / "cuda-smoke" / self.encoder / "seed-0"

    def start(self, name: str, command: list[str], **env: str) -> None:
        log = open(self.folder / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env=child_env(CUDA_VISIBLE_DEVICES=self.gpu, OMP_NUM_THREADS="2",
                                                          TORCHINDUCTOR_COMPILE_THREADS="1", **env))
        log.close()

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def run_kill_resume(cases: list[KillResumeCase], timeout_s: float = 600) -> None:
    """Start every case's runs at once: ``straight`` and ``again`` uninterrupted, ``killed`` (blocked in epoch
    2, then SIGKILLed) and, once it is killed, ``resumed`` in the killed run's folder."""
    script = cases[0].folder.parent / "blocking_train.py"
    script.write_text(BLOCKING_TRAIN)
    cli = [sys.executable, "-m", "mvlip_utils.train"]
    for case in cases:
        case.folder.mkdir(parents=True, exist_ok=True)
        case.start("straight", cli + case.args("straight"))
        case.start("again", cli + case.args("again"))
        case.start("killed", [sys.executable, str(script)] + case.args("killed"),
                   MVLIP_TEST_BLOCK_AT=str(BLOCK_AT_CALL), MVLIP_TEST_BLOCKED=str(case.folder / "blocked"))
    deadline = time.monotonic() + timeout_s
    waiting = list(cases)
    while time.monotonic() < deadline:
        for case in list(waiting):
            killed = case.procs["killed"]
            if (case.folder / "blocked").exists():
                killed.send_signal(signal.SIGKILL)
                killed.wait()
                checkpoint = case.run("killed") / "checkpoint.pt"
                case.killed_after_epoch = int(torch.load(checkpoint, weights_only=True, map_location="cpu")["epoch"])
                case.start("resumed", cli + case.args("killed"))
                waiting.remove(case)
            elif killed.poll() is not None:
                case.problem = f"the run to be killed ended by itself (exit {killed.returncode}):\n{case.log_tail('killed')}"
                waiting.remove(case)
        if not waiting and all(p.poll() is not None for c in cases for p in c.procs.values()):
            break
        time.sleep(0.2)
    for case in cases:
        for name, proc in case.procs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                case.problem = case.problem or f"{name} did not finish within {timeout_s:.0f} s:\n{case.log_tail(name)}"
            elif proc.returncode != 0 and name != "killed":
                case.problem = case.problem or f"{name} failed (exit {proc.returncode}):\n{case.log_tail(name)}"


@pytest.fixture(scope="module", autouse=True)
def kill_resume_batch(tmp_path_factory, request):
    """The kill-and-resume runs start with the module's first test and run beside the study (a): they are
    single processes that wait for compilation or the GPU as much as the study's chains do."""
    from mvlip_utils.train import experiment as exp
    from mvlip_utils.settings.profiles import get_config

    if not any("kill_resume_cases" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("kill-resume")
    # the generated dataset is written once, before the runs that share it start
    exp.dataset_root(get_config("cuda-smoke", generated_classes=4, generated_train_per_class=16,
                                generated_val_per_class=4, image_size=64, data_dir=str(tmp / "data")), progress=False)
    pairs = [(encoder, step) for step in KILL_STEPS for encoder in ENCODERS]
    cases = {pair: KillResumeCase(pair[0], pair[1], gpu, tmp / f"{pair[0]}-{pair[1]}")
             for pair, gpu in zip(pairs, spread(len(pairs)))}
    batch = {"cases": cases, "started": time.perf_counter(), "error": None}

    def run() -> None:
        try:
            run_kill_resume(list(cases.values()))
        except Exception as exc:  # noqa: BLE001 - reported by every case's test
            batch["error"] = f"{type(exc).__name__}: {exc}"

    thread = batch["thread"] = threading.Thread(target=run, daemon=True)
    thread.start()
    yield batch
    thread.join()


@pytest.fixture(scope="module")
def kill_resume_cases(kill_resume_batch):
    kill_resume_batch["thread"].join()
    assert kill_resume_batch["error"] is None, kill_resume_batch["error"]
    print(f"[gpu tier] {len(kill_resume_batch['cases'])} kill-and-resume cases, started with the module: "
          f"{time.perf_counter() - kill_resume_batch['started']:.1f} s", flush=True)
    return kill_resume_batch["cases"]


def run_state(run: Path) -> dict:
    """What a finished run is: its history file, its metrics (timing aside), its final model and optimizer."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("eval_images_per_s", None)
    state = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")
    return {"history": (run / "history.csv").read_bytes(), "metrics": json.dumps(metrics, sort_keys=True),
            "model": state["model"], "optimizer": state["optimizer"]["state"], "epoch": state["epoch"]}


def differences(a: dict, b: dict) -> list[str]:
    out = [name for name in ("history", "metrics", "epoch") if a[name] != b[name]]
    out += [f"model {k}" for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])][:5]
    for index, state in a["optimizer"].items():
        out += [f"optimizer {index} {k}" for k, v in state.items()
                if torch.is_tensor(v) and not torch.equal(v, b["optimizer"][index][k])][:5]
    return out


@pytest.mark.parametrize("step", KILL_STEPS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_deterministic_runs_repeat_and_a_killed_run_resumes_bit_for_bit(kill_resume_cases, encoder, step):
    case = kill_resume_cases[(encoder, step)]
    assert case.problem is None, case.problem
    assert case.killed_after_epoch == 1  # killed in epoch 2, its checkpoint after epoch 1
    straight, again, resumed = (run_state(case.run(name)) for name in ("straight", "again", "killed"))
    assert json.loads((case.run("straight") / "config.json").read_text())["deterministic"] is True
    assert straight["epoch"] == 3
    assert differences(straight, again) == [], "two identical deterministic runs differ"
    assert differences(straight, resumed) == [], "the resumed run differs from the uninterrupted one"


# ------------------------------------------------- e. the paper profile's chapters with release weight files
PAPER_ENCODERS = tuple(os.environ.get("MVLIP_GPU_TIER_PAPER_ENCODERS", "vit").split())


def release_weight_files(folder: Path, encoders) -> dict[str, Path]:
    """Weight files in the formats their sources publish (random tensors, paper-size architectures), as
    tests/test_weights.py makes them: {environment variable: file}."""
    import open_clip
    import timm
    from safetensors.torch import save_file

    from mvlip_utils.models.model import TEXT_WEIGHTS_ENV
    from mvlip_utils.models.towers import TIMM_NAMES, WEIGHTS_ENV

    files: dict[str, Path] = {}
    torch.manual_seed(11)
    clip = open_clip.create_model("ViT-B-32-quickgelu").state_dict()
    files[TEXT_WEIGHTS_ENV] = folder / "open_clip_pytorch_model.bin"  # the .bin the hub offers for every CLIP
    torch.save(clip, files[TEXT_WEIGHTS_ENV])
    if "vit" in encoders:  # its safetensors twin for the image tower
        files[WEIGHTS_ENV["vit"]] = folder / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in clip.items()}, str(files[WEIGHTS_ENV["vit"]]))
    if "swin" in encoders:
        state = {k: v.contiguous() for k, v in timm.create_model("swin_base_patch4_window7_224", num_classes=1000).state_dict().items()}
        files[WEIGHTS_ENV["swin"]] = folder / "model.safetensors"
        save_file(state, str(files[WEIGHTS_ENV["swin"]]))
    if "mambavision" in encoders:  # NVlabs' release: timm's train.py checkpoint with its argparse.Namespace
        state = timm.create_model(TIMM_NAMES["mambavision"], num_classes=1000).state_dict()
        files[WEIGHTS_ENV["mambavision"]] = folder / "mambavision_base_21k.pth.tar"
        torch.save({"epoch": 300, "arch": "mamba_vision_B_21k", "state_dict": state, "version": 2, "metric": 84.2,
                    "args": argparse.Namespace(model="mamba_vision_B_21k", lr=5e-4, epochs=300)},
                   files[WEIGHTS_ENV["mambavision"]])
    return files


@pytest.fixture(scope="module")
def paper_chapters(tmp_path_factory, project_env):
    from mvlip_utils.data import generated
    from mvlip_utils.study import runner as study

    root = study_root(tmp_path_factory.mktemp("paper"))
    weights = release_weight_files(root, PAPER_ENCODERS)
    data = generated.make_imagenet_like_dataset(root / "imagenet-mini", n_classes=10, train_per_class=8,
                                                val_per_class=2, seed=0, progress=False)
    overrides = {"data": str(data), "data_dir": str(root / "data"), "results_dir": str(root / "results"),
                 "epochs": 1, "num_workers": 2, "step_check_images": 64, "warmup": 1, "repeats": 3,
                 "eval_repeats": 1, "eval_workers": 2, "best_batch": 32, "resolutions": [224], "sweep_batch": 32,
                 "seeds": [0]}
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        for variable, path in weights.items():  # the README's way: the environment variables
            mp.setenv(variable, str(path))
        report = study.run_study("paper", list(PAPER_ENCODERS), overrides, book=False, root=root,
                                 encoder_steps_only=True, log=lambda line: print(line, flush=True))
    print(f"[gpu tier] the paper chapters of {list(PAPER_ENCODERS)}: {time.perf_counter() - started:.1f} s", flush=True)
    return {"root": root, "results": root / "results" / "paper", "weights": weights, "report": report}


def file_tensors_in_run(encoder: str, file: Path, model_state: dict) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, the file's tensor, the trained run's tensor) for backbone tensors the file gave the tower."""
    from mvlip_utils.models.weights import read_state_dict

    state = read_state_dict(str(file))  # what the tower read (the release's Namespace is allowed)
    if encoder == "vit":  # open_clip's names for two of the tensors timm renames
        pairs = {"visual.backbone.patch_embed.proj.weight": "visual.conv1.weight",
                 "visual.backbone.blocks.0.attn.qkv.weight": "visual.transformer.resblocks.0.attn.in_proj_weight",
                 "visual.backbone.norm_pre.weight": "visual.ln_pre.weight"}
        # CLIP's own visual projection, kept as timm's head (transposed)
        state = {**state, "visual.proj.T": state["visual.proj"].T}
        pairs["visual.backbone.head.weight"] = "visual.proj.T"
    else:  # the same names; BatchNorm's running statistics move with every training batch, not by the optimizer
        pairs = {f"visual.backbone.{k}": k for k in state if f"visual.backbone.{k}" in model_state
                 and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    return [(name, state[key], model_state[name]) for name, key in pairs.items()]


@pytest.mark.parametrize("encoder", PAPER_ENCODERS)
def test_the_paper_chapters_run_with_release_weight_files(paper_chapters, encoder):
    from mvlip_utils.data.files import read_json
    from mvlip_utils.settings import notebooks
    from mvlip_utils.settings.profiles import get_config
    from mvlip_utils.train import run_folder

    run = paper_chapters["results"] / encoder / "seed-0"
    for nb in notebooks.PER_ENCODER:
        assert notebooks.Step(nb, encoder, "paper").output(paper_chapters["root"] / "book").is_file(), nb
    config = run_folder.load_config(run)
    paper = get_config("paper")
    assert (config["pretrained"], config["train_step"], config["precision"], config["image_size"]) == (
        True, paper.train_step, paper.precision, 224)
    assert config["resolved_device"].startswith("cuda") and config["n_classes"] == 10
    assert run_folder.load_metrics(run)["epochs"] == 1 and run_folder.run_state(run)[0] == "finished"
    assert {r["kind"] for r in run_folder.read_benchmark(run.parent / "benchmark.json")["records"]} >= {
        "eval_loop", "model_only", "resolution_sweep"}
    before = read_json(run / "before_training.json")  # the model as built, in the run's precision and fp16
    assert set(before) == {paper.precision, "fp16"} and all(0 <= m["accuracy"] <= 1 for m in before.values())
    # the tower started from the file: after one short epoch (two AdamW steps of 1e-4) its tensors are within
    # a few steps' size of the file's (a random start would be as far as the weights are large)
    from mvlip_utils.models.towers import WEIGHTS_ENV

    state = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
    compared = file_tensors_in_run(encoder, paper_chapters["weights"][WEIGHTS_ENV[encoder]], state)
    assert compared
    for name, from_file, trained in compared:
        assert from_file.shape == trained.shape, name
        assert (from_file.float() - trained.float()).abs().max() < 2e-3, name
