"""Measurement: training-step, data-path and paper-scale timings. Calls :mod:`qsmrep.run` (the same
training step the trainer runs), never copies it."""
