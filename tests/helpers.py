"""Helpers shared by the test modules: one CPU thread, and a non-finite step injected into training."""

from __future__ import annotations

import contextlib

import torch

from qsmrep.core.loss import PhysicsInformedLoss


class Boom(Exception):
    """The crash :func:`inject` raises in the middle of an epoch (``kind="raise"``)."""


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread while the block runs (small models: faster and reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def inject(monkeypatch, at_call: int, kind: str = "loss") -> dict:
    """Make the ``at_call``-th training loss (1-based, grad-enabled calls only) non-finite.

    kind="loss": the loss itself is NaN; kind="grad": the loss is finite but the gradient of the
    prediction is NaN; kind="raise": raise :class:`Boom` (a crash in the middle of an epoch).
    Returns the call counter (``{"n": calls so far}``).
    """
    original = PhysicsInformedLoss.components
    calls = {"n": 0}

    def components(self, pred, chi, field):
        parts = original(self, pred, chi, field)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == at_call:
                if kind == "raise":
                    raise Boom(f"crash at training call {at_call}")
                if kind == "loss":
                    parts = {**parts, "total": parts["total"] * float("nan")}
                else:
                    pred.register_hook(lambda g: g * float("nan"))
        return parts

    monkeypatch.setattr(PhysicsInformedLoss, "components", components)
    return calls
