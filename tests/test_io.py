"""Atomic writers of qsmrep.run.files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from qsmrep.run.files import save_figure


def _figure():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.arange(64.0).reshape(8, 8), cmap="gray")
    ax.plot([0, 7], [0, 7], label="line")
    ax.set_title("χ (ppm)")
    ax.legend()
    return fig


def test_save_figure_is_byte_identical_on_rerender(tmp_path):
    first = save_figure(_figure(), tmp_path / "a", formats=("png", "svg", "pdf"))
    second = save_figure(_figure(), tmp_path / "b", formats=("png", "svg", "pdf"))
    plt.close("all")
    assert [p.suffix for p in first] == [".png", ".svg", ".pdf"]
    for one, two in zip(first, second):
        assert one.read_bytes() == two.read_bytes(), one.suffix
    svg = first[1].read_text()
    assert "<dc:date>" not in svg and "<svg" in svg
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
