"""Training a run: what it is built from, the loop and its command line, the run folder, torchrun, one process per GPU, evaluation."""
