"""The `sgmim` command line: local training and data tools, and a client of the REST API."""

from __future__ import annotations

from pathlib import Path

import typer

from sgmim.cli import jobs as client
from sgmim.cli import organise
from sgmim.cli.analyze import analyze_app
from sgmim.cli.data import data_app
from sgmim.cli.plot import plot
from sgmim.cli.services import serve, worker
from sgmim.cli.study import study_app
from sgmim.cli.train import train

app = typer.Typer(
    name="sgmim",
    help="SG-MIM training service: pretrain, fine-tune and evaluate depth-guided MIM encoders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    url: str | None = typer.Option(None, "--url", help="server URL (else SGMIM_URL, the config file, "
                                                       "http://127.0.0.1:$SGMIM_PORT, port 8000)"),
    token: str | None = typer.Option(None, "--token", help="API token (else SGMIM_TOKEN or the config file)"),
) -> None:
    """SG-MIM training service."""
    ctx.obj = (url, token)


for command in (serve, worker, client.submit, client.jobs, client.show, client.watch, client.logs,
                client.cancel, client.resume, client.checkpoints, client.download, organise.tag,
                organise.note, organise.compare, organise.archive, organise.delete, organise.prune):
    app.command()(command)
app.command("eval")(client.evaluation)
app.command()(plot)
app.command()(train)
app.add_typer(data_app, name="data")
app.add_typer(analyze_app, name="analyze")
app.add_typer(study_app, name="study")


@app.command()
def demo(
    size: str = typer.Option("default", help="default (a few minutes on 2 CPU cores) or small (CI)"),
    workdir: Path | None = typer.Option(None, help="where state and artifacts go "
                                                   "(default runs/demo-<time>)"),
    keep_serving: bool = typer.Option(False, "--keep-serving",
                                      help="keep the API, its web dashboard and the worker up at the "
                                           "end (until Ctrl-C), to look at the runs"),
) -> None:
    """Start the service, pretrain SG-MIM and SimMIM, fine-tune and evaluate both, compare."""
    from sgmim.cli.demo import SIZES, run_demo

    if size not in SIZES:
        raise typer.BadParameter(f"choose one of {', '.join(SIZES)}", param_hint="--size")
    run_demo(size, workdir, keep_serving)
