"""`sgmim data`: make datasets on disk (synthetic scenes, pseudo-depth from a depth network).

Heavy imports (torch, transformers) happen inside the commands so that `sgmim --help` stays
fast. Bad input ends with one `error: ...` line and exit code 1, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

data_app = typer.Typer(
    help="Datasets: render synthetic RGB-D scenes, compute pseudo-depth with a depth network.",
    no_args_is_help=True,
)


def _parse_size(text: str) -> tuple[int, int]:
    """'192' → (192, 192); '192x256' → (192, 256) as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected S or HxW, e.g. 192 or 192x256") from None
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise typer.BadParameter(f"{text!r}: expected S or HxW with sides of at least 8 pixels")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _run(action: Callable[[], None]) -> None:
    """Run `action`, turning expected failures (bad data, bad paths) into one error line."""
    from sgmim.data.errors import DataError

    try:
        action()
    except DataError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns)


@data_app.command()
def synth(
    out: Path = typer.Option(..., help="output folder (images/, depth/, gt_depth/, labels/)"),
    count: int = typer.Option(..., min=1, help="number of scenes"),
    size: str = typer.Option("192", help="image size: S or HxW"),
    split: str = typer.Option("train", help="seed range: train, val or test (never overlap)"),
    first: int = typer.Option(0, min=0, help="first seed offset inside the split's range"),
    workers: int = typer.Option(1, min=1, help="processes rendering in parallel"),
) -> None:
    """Render procedural indoor scenes into the image-folder layout."""
    shape = _parse_size(size)

    def action() -> None:
        from sgmim.data.synthetic import split_seeds
        from sgmim.data.synthetic.export import write_synthetic_dataset

        # Bad arguments fail before the progress bar starts.
        split_seeds(split, first, count)
        out.mkdir(parents=True, exist_ok=True)
        with _progress() as progress:
            task = progress.add_task(f"rendering {split}", total=count)
            write_synthetic_dataset(out, count, shape, split, first, workers,
                                    on_progress=lambda: progress.advance(task))
        typer.echo(f"wrote {count} scenes to {out}")

    _run(action)


@data_app.command("pseudo-depth")
def pseudo_depth(
    images: Path = typer.Option(..., help="image folder (any sub-folders; .jpg/.png)"),
    out: Path = typer.Option(..., help="depth folder to write, mirroring the image folder"),
    model: Path = typer.Option(..., help="local transformers depth model folder (e.g. DPT-Hybrid)"),
    batch_size: int = typer.Option(8, min=1, help="images per forward pass"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    invert: bool = typer.Option(False, help="write 1 - prediction (for models that predict depth, "
                                            "not inverse depth, such as Omnidata)"),
    strict: bool = typer.Option(False, help="stop at the first unreadable image instead of skipping it"),
) -> None:
    """Run a monocular depth network over an image folder and write 16-bit PNG maps (resumable)."""

    def action() -> None:
        from sgmim.data.depth_model import DepthPredictor, check_image_dir, write_pseudo_depth

        check_image_dir(images)
        predictor = DepthPredictor(model, device)
        with _progress() as progress:
            task = progress.add_task("pseudo-depth", total=None)
            report = write_pseudo_depth(
                images, out, predictor, batch_size, invert, strict,
                on_plan=lambda n: progress.update(task, total=n),
                on_progress=lambda k: progress.update(task, completed=k))
        typer.echo(f"wrote {report.written}, already done {report.already_done}, "
                   f"unreadable {report.failed}: {out}")

    _run(action)
