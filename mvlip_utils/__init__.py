"""mvlip_utils: the library behind the MVLIP study; the notebooks are the application on top of it.

One subpackage per stage of the study, each importing only from itself and the stages before it
(``STAGES``, lowest first; ``tests/test_layout.py`` checks it):

- settings: every parameter with its default and help, the profiles, parameters into configs, precision,
  the notebooks' names;
- data: the generated offline datasets, ImageFolders with CLIP's preprocessing, the uint8 cache;
- models: the selective scan and its Triton kernels, weight files, the image towers, the CLIP assembly;
- train: what a run is built from, the optimiser, the loop and its command line, the run folder and its
  checkpoints, torchrun, one process per GPU, evaluation;
- measure: the timing method, FLOPs, what the benchmark chapter measures, the training steps' check and
  profiles;
- report: the verdicts (findings) and their paired statistics, an edition's tables, projections, plots, and how
  the notebooks show them;
- study: the papermill runner, when a notebook is reused, the book.
"""

__version__ = "0.1.0"

STAGES = ("settings", "data", "models", "train", "measure", "report", "study")
