"""A notebook's parameters turned into the study's objects: the run's StudyConfig, the measuring
BenchSettings, whether a finished run can be loaded instead of trained (``reusable_run``) and how a run
was got (``describe_training``); and the working folder a notebook needs (``work_in_project_root``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping


def work_in_project_root() -> None:
    """Make the repository root the working folder when a notebook runs from ``notebooks/`` (JupyterLab
    starts a notebook's kernel in the notebook's own folder), so that ``data/`` and ``results/`` are the
    repository's, as under the study runner (papermill runs the notebooks from the root)."""
    import os
    from pathlib import Path

    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "mvlip_utils").is_dir() and not (here / "mvlip_utils").is_dir():
        os.chdir(here.parent)


def config_from_parameters(namespace: Mapping[str, Any], **fixed: Any):
    """The StudyConfig of a notebook's parameters: ``namespace`` holds ``profile`` and any StudyConfig
    field (None = the profile's value); ``fixed`` overrides (e.g. encoder=...)."""
    from .profiles import StudyConfig, get_config

    if "profile" not in namespace:
        raise ValueError("the notebook's parameters must define 'profile'")
    values = {f.name: namespace[f.name] for f in fields(StudyConfig) if f.name != "profile" and f.name in namespace}
    values.update(fixed)
    return get_config(namespace["profile"], **values)


def bench_from_parameters(namespace: Mapping[str, Any]):
    """The BenchSettings of a notebook's parameters (None = the profile's value)."""
    from .profiles import BenchSettings, get_bench_settings

    values = {f.name: namespace[f.name] for f in fields(BenchSettings) if f.name in namespace}
    return get_bench_settings(namespace["profile"], **values)


def parameter_names() -> list[str]:
    """Every StudyConfig field: each notebook's parameters cell defines all of them."""
    from .profiles import StudyConfig

    return [f.name for f in fields(StudyConfig)]


def reusable_run(config) -> bool:
    """True when the run folder of ``config`` holds its finished run (the same parameters, ``epochs``
    included, profiles.RUN_IRRELEVANT aside; the same tower architecture; files that agree): the train
    notebook then loads it instead of training. False when the folder holds no finished run. A finished
    run of other parameters raises train.RunMismatchError (naming the folder, the run, the parameters
    and the ways on), as train_run would: it is never retrained, extended or relabelled silently."""
    from .train import finished_run_history

    return finished_run_history(config) is not None


def describe_training(run, epochs: int, trained_now: int, seconds: float, loaded: bool = False) -> str:
    """How a train notebook got its run, for "We ...": loaded, trained from scratch, resumed, or completed
    (the checkpoint held every epoch, only the final evaluation was missing)."""
    if loaded:
        return f"loaded the finished run in `{run}` (nothing retrained)"
    if trained_now == epochs:
        return f"trained the run in `{run}` from scratch in {seconds:.1f} s"
    if trained_now:
        return (f"resumed the run in `{run}` after epoch {epochs - trained_now} and trained {trained_now} "
                f"more epoch(s) in {seconds:.1f} s")
    return (f"completed the run in `{run}`: its checkpoint held all {epochs} epoch(s), the final evaluation "
            f"was written in {seconds:.1f} s")
