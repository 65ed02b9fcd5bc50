"""The physics-informed loss of the paper (Fig. 2D; λ = 1):

    L(χ̂, χ, B) = ‖χ̂ − χ‖ + λ · ‖D ∗ χ̂ − B_target‖

with D ∗ · the dipole convolution (:func:`qsmrep.core.physics.forward_field`). The paper does not give
the norms in its text; the default is L1 (mean absolute error) for both terms, as QSMnet (Yoon et
al. 2018), which the paper cites. ``B_target`` is, by default, the field of the label patch, D ∗ χ
("label"; QSMnet's model loss): on a patch cut from a larger map the input field also holds
contributions from sources outside the patch that no patch-sized χ̂ can reproduce, so comparing
with it adds an irreducible floor. On full maps both choices coincide, since the input field was
made by the same forward model. ``field_target="input"`` compares with the input field instead.

Tensors are (N, 1, X, Y, Z), ppm. The loss is always computed in float32, also under autocast.
"""

from __future__ import annotations

import torch
from torch import nn

from qsmrep import registry
from qsmrep.core.physics import DipolePhysics

NORMS = {
    "l1": lambda a, b: (a - b).abs().mean(),
    "mse": lambda a, b: (a - b).square().mean(),
}
NORM_SYMBOLS = {"l1": r"\Vert {}\Vert_1", "mse": r"\Vert {}\Vert_2^2"}  # mathtext of each norm, for Figure 2D
assert tuple(NORMS) == registry.LOSS_NORMS


class PhysicsInformedLoss(nn.Module):
    """χ similarity plus λ × field consistency; see the module docstring for the formula.

    ``physics`` is the geometry (:class:`qsmrep.core.physics.DipolePhysics`) of the dipole model D.
    """

    def __init__(self, lam: float = 1.0, chi_norm: str = "l1", field_norm: str = "l1", field_target: str = "label",
                 physics: DipolePhysics | None = None):
        super().__init__()
        registry.check_choice("chi_norm", chi_norm, registry.LOSS_NORMS)
        registry.check_choice("field_norm", field_norm, registry.LOSS_NORMS)
        registry.check_choice("field_target", field_target, registry.FIELD_TARGETS)
        if not lam >= 0:
            raise ValueError(f"lam: must be ≥ 0, got {lam}")
        self.lam = float(lam)
        self.chi_norm, self.field_norm, self.field_target = chi_norm, field_norm, field_target
        self.physics = physics or DipolePhysics()

    def components(self, pred: torch.Tensor, chi: torch.Tensor, field: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"chi": ‖χ̂ − χ‖, "field": ‖D∗χ̂ − B‖, "total": chi + λ·field}`` as 0-d float32 tensors."""
        if pred.shape != chi.shape or chi.shape != field.shape:
            raise ValueError(f"loss: shapes differ: pred {tuple(pred.shape)}, chi {tuple(chi.shape)}, field {tuple(field.shape)}")
        pred, chi, field = pred.float(), chi.float(), field.float()
        chi_term = NORMS[self.chi_norm](pred, chi)
        target = self.physics.A(chi) if self.field_target == "label" else field
        field_term = NORMS[self.field_norm](self.physics.A(pred), target)
        return {"chi": chi_term, "field": field_term, "total": chi_term + self.lam * field_term}

    def forward(self, pred: torch.Tensor, chi: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        return self.components(pred, chi, field)["total"]

    @classmethod
    def from_config(cls, config, physics: DipolePhysics | None = None) -> "PhysicsInformedLoss":
        """The loss of ``config`` with its geometry (``physics``, built from the config when not given)."""
        return cls(config.lam, config.chi_norm, config.field_norm, config.field_target,
                   physics or DipolePhysics.from_config(config))
