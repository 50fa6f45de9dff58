from sgmim.cli import app

app(prog_name="sgmim")
