"""`sgmim data`: make datasets on disk (synthetic scenes, pseudo-depth from a depth network).

Heavy imports (torch, transformers) happen inside the commands so that `sgmim --help` stays
fast. Bad input ends with one `error: ...` line, never a traceback: exit code 2 for invalid scene
settings (as `sgmim train --set` for an invalid spec), 1 for bad data and paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sgmim.spec import SyntheticConfig

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


DEFAULT_SIZE = 192   # the fine-tuning scenes' default render size too
SceneSize = int | tuple[int, int]


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _scene_settings(scene: Path | None, assignments: list[str]) -> tuple[SyntheticConfig, SceneSize | None]:
    """The `synthetic:` block of `scene` (default: a spec's defaults) with the `--set`
    assignments applied inside it, validated as a job spec's; invalid: exit 2. With a whole job
    spec, the block of its data section and the size the job renders its scenes at."""
    from sgmim.spec import (
        SceneFile,
        SpecError,
        parse_section,
        read_spec_data,
    )

    try:
        data = read_spec_data(scene, "a synthetic: block or a job spec") if scene is not None else {}
        if "kind" in data and "config" in data:
            return _job_scene_settings(data, assignments)
        _set_inside_block(data, assignments)
        return parse_section(SceneFile, data).synthetic, None
    except SpecError as exc:
        _fail(f"invalid scene settings: {exc}", code=2)


def _set_inside_block(holder: dict, assignments: list[str]) -> None:
    """Apply the `--set` assignments inside `holder`'s `synthetic:` block (an empty one if it
    has none); a block that is not a mapping is left for validation to name."""
    from sgmim.spec import SyntheticConfig, apply_overrides

    if holder.get("synthetic") is None:
        holder["synthetic"] = {}
    if isinstance(holder["synthetic"], dict):
        apply_overrides(holder["synthetic"], assignments, root=SyntheticConfig)


def _job_scene_settings(job: dict, assignments: list[str]) -> tuple[SyntheticConfig, SceneSize]:
    """A job spec's `config.data.synthetic` block (with the assignments inside it) and the size
    its synthetic source renders at: `render_size`, else the pretraining encoder's input size,
    else the fine-tuning scenes' default. Only the config is validated: a fine-tuning spec's
    parent is given when it is submitted."""
    from sgmim.spec import (
        EvaluateConfig,
        FinetuneConfig,
        PretrainConfig,
        SpecError,
        parse_section,
    )

    configs = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "evaluate": EvaluateConfig}
    kind, config = job["kind"], job["config"] if job["config"] is not None else {}
    if not isinstance(kind, str) or kind not in configs:
        raise SpecError([("kind", f"unknown job kind {kind!r}: expected one of {', '.join(configs)}")])
    if isinstance(config, dict) and config.get("data") is None and kind != "evaluate":
        config["data"] = {}   # the defaults: synthetic scenes
    section = config.get("data") if isinstance(config, dict) else None
    if isinstance(section, dict):
        _set_inside_block(section, [_inside_job_block(a) for a in assignments])
    try:
        parsed = parse_section(configs[kind], config)
    except SpecError as exc:  # paths from the spec's root, as `sgmim train` names them
        raise SpecError([(f"config.{path}" if path else path, msg) for path, msg in exc.errors],
                        exc.types) from None
    data = parsed.data
    if data is None:
        raise SpecError([("config.data", f"this {kind} job has no data section of its own: it "
                                         "evaluates on its parent's data")])
    source = data.source if kind == "pretrain" else data.dataset
    if source != "synthetic":
        raise SpecError([("config.data", f"this {kind} job reads {source} data, not synthetic scenes")])
    job_size = parsed.model.encoder.img_size if kind == "pretrain" else DEFAULT_SIZE
    return data.synthetic, data.synthetic.render_size or job_size


JOB_BLOCK = "config.data.synthetic."


def _inside_job_block(assignment: str) -> str:
    """An assignment inside the block, written as `sgmim submit --set` would for the job spec
    (`config.data.synthetic.render_size=96`) or inside the block (`render_size=96`); any other
    path of the job spec is not a scene setting."""
    from sgmim.spec import SpecError

    if assignment.startswith(JOB_BLOCK):
        return assignment[len(JOB_BLOCK):]
    if assignment.startswith("config."):
        key = assignment.partition("=")[0]
        raise SpecError([("", f"--set {assignment!r}: {key} is not a scene setting; --set takes "
                              f"paths inside the synthetic block (e.g. render_size=96, or "
                              f"{JOB_BLOCK}render_size=96)")])
    return assignment


def _image_shape(size: str | None, render_size: SceneSize | None) -> tuple[int, int]:
    """--size, else the scene settings' render_size (a job spec's: the size the job renders
    at), else DEFAULT_SIZE, as (height, width)."""
    if size is not None:
        return _parse_size(size)
    side = render_size or DEFAULT_SIZE
    return (side, side) if isinstance(side, int) else tuple(side)


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
    out: Path = typer.Option(..., help="output folder (images/, depth/, gt_depth/, labels/, meta.json)"),
    count: int = typer.Option(..., min=1, help="number of scenes"),
    size: str | None = typer.Option(None, help="image size: S or HxW (default: the scene settings' "
                                                 f"render_size, else {DEFAULT_SIZE})"),
    split: str = typer.Option("train", help="seed range: train, val or test (never overlap)"),
    first: int = typer.Option(0, min=0, help="first seed offset inside the split's range (a job "
                                             "spec's data.seed)"),
    workers: int = typer.Option(1, min=1, help="processes rendering in parallel"),
    scene: Path | None = typer.Option(None, "--scene", help="YAML or JSON file holding a `synthetic:` "
                                                            "block (as a job spec's data section, or a "
                                                            "folder's meta.json, has it) or a whole job "
                                                            "spec, whose scenes and size it renders"),
    assignments: list[str] = typer.Option(
        [], "--set", help="key.path=value inside the synthetic block, applied after --scene "
                          "(with a job spec, config.data.synthetic.key.path=value too), "
                          "e.g. geometry.room_side=[3,5] or num_objects=[0,2]"),
) -> None:
    """Render procedural indoor scenes into the image-folder layout, with a job spec's scene
    settings: the same seeds and settings give the scenes a training job's synthetic source draws."""
    synthetic, job_size = _scene_settings(scene, assignments)
    shape = _image_shape(size, job_size or synthetic.render_size)

    def action() -> None:
        from sgmim.data.synthetic.export import render_into, start_synthetic_dataset

        # Bad arguments and folders fail before the progress bar starts.
        seeds = start_synthetic_dataset(out, count, shape, split, first, synthetic)
        with _progress() as progress:
            task = progress.add_task(f"rendering {split}", total=count)
            render_into(out, seeds, shape, synthetic, workers, on_progress=lambda: progress.advance(task))
        typer.echo(f"wrote {count} scenes to {out} (their settings: {out / 'meta.json'})")

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
