"""The `sgmim` command line."""

from __future__ import annotations

import typer

from sgmim.cli.data import data_app

app = typer.Typer(
    name="sgmim",
    help="SG-MIM training service: pretrain, fine-tune and evaluate depth-guided MIM encoders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


from sgmim.cli.train import train  # noqa: E402

app.command()(train)

app.add_typer(data_app, name="data")


@app.command()
def demo(steps: int = typer.Option(20, help="optimisation steps of the local demo")) -> None:
    """Pretrain a tiny SG-MIM and its SimMIM baseline for a few steps and print the losses."""
    from sgmim.cli.local_demo import run_local_demo

    run_local_demo(steps)


@app.callback()
def main() -> None:
    """SG-MIM training service."""
