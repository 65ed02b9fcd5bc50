"""qsmrep: a reproduction of Graf et al., ISMRM 2023 #5188 (activation functions for a 3D U-Net
solving the QSM dipole inversion)."""

__version__ = "0.1.0"
