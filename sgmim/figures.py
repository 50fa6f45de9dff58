"""PNG figures: matplotlib on its file-only backend, imported on first use so that the CLI, the
service and the trainer never pay for it otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def png_panels(output: Path, panels: int, panel_size: tuple[float, float], dpi: int = 110) -> Iterator[list]:
    """One row of `panels` axes; on leaving the block the figure is laid out and written to
    `output` (its folder made), and closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = panel_size
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=dpi)
    finally:
        plt.close(fig)


def colour_cycle() -> list[str]:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
