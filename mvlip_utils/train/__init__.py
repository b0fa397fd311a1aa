"""Training a run: its build, loop, command line, run folder, checkpoint, evaluation and multi-GPU launch."""
