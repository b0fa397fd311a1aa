"""mvlip_utils: the library behind the MVLIP study; the notebooks are the application on top of it.

One concern per module, by stage:
- settings: profiles (every parameter with its help text, the smoke / speed / paper profiles), params (a
  notebook's or a command line's parameters turned into configs), precision;
- data: generated (the offline datasets), data (reading ImageFolders, CLIP preprocessing, the uint8 cache);
- models: ssm (the selective scan) and ssm_triton (its Triton kernels), towers, weights (reading weight
  files safely), model (the CLIP assembly);
- training: experiment (what a run is built from), train (the loop), run_folder (checkpoints and the files
  of a run), distributed (torchrun), launch (one process per encoder and GPU), evaluate;
- measuring: benchmark (the timing method), flops (FLOPs and the fraction of the GPU's peak),
  benchmark_suite (what the benchmark chapter measures), scale (the paper's study at this speed);
- results and the book: results (run folders, provenance, JSON), findings (the verdicts), discussion (an
  edition's tables and sentences), plots, report (how notebooks show things), notebooks (names and steps),
  study (the papermill runner), book (table of contents and the build).
"""

__version__ = "0.1.0"
