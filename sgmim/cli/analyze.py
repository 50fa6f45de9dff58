"""`sgmim analyze`: analyses of trained encoders.

Heavy imports happen inside the commands. Bad input ends with one `error: ...` line and exit
code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

analyze_app = typer.Typer(help="Analyse encoders: Fourier spectra of feature maps (paper Figure 3).",
                          no_args_is_help=True)


@analyze_app.command()
def fourier(
    encoders: list[Path] = typer.Argument(..., help="encoder.safetensors (pretraining export) or "
                                                    "model.safetensors (fine-tuned); several to compare"),
    data: str = typer.Option("synthetic", "--data", help="'synthetic' scenes or a folder of images"),
    num_images: int = typer.Option(16, "--num-images", min=1, help="images averaged over"),
    out: Path = typer.Option(Path("fourier"), "--out", help="folder for fourier.json and fourier.png"),
    labels: str | None = typer.Option(None, "--labels", help="comma-separated legend labels, one per "
                                                             "encoder (default: job id or run folder)"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", help="first synthetic scene"),
) -> None:
    """Δ log amplitude of the Fourier-transformed feature maps of each stage, frequency 0 to π
    along the half diagonal, averaged over images and channels (SG-MIM vs SimMIM side by side)."""
    from sgmim.analysis.fourier import AnalysisError, fourier_analysis, write_fourier
    from sgmim.data.errors import DataError

    try:
        names = [s.strip() for s in labels.split(",")] if labels else None
        result = fourier_analysis(list(encoders), data, num_images, names, batch_size, seed)
        json_path, png_path = write_fourier(result, out)
    except (AnalysisError, DataError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.secho(f"error: {exc.filename or ''}: {exc.strerror or exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for enc in result["encoders"]:
        last = enc["stages"][-1]
        typer.echo(f"{enc['label']}: {len(enc['stages'])} stages; {last['name']} Δ log amplitude at π "
                   f"{last['delta_log_amplitude'][-1]:.3f}")
    typer.echo(f"wrote {json_path} and {png_path}")
