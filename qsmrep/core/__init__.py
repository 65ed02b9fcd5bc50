"""The science: dipole physics, the synthetic generator, the U-Net, the loss, the metrics, the phantom.

Imports nothing of qsmrep above it (only :mod:`qsmrep.registry`)."""
