"""`python -m matlab` runs the `matformer` command."""

from matlab.cli import app

app(prog_name="matformer")
