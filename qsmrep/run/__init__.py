"""One run: configuration, runtime settings, data sources, the training step, the trainer, the run
folder, evaluation and prediction. Builds on :mod:`qsmrep.core`."""
