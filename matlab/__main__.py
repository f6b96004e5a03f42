"""`python -m matlab` runs the CLI (for where the console script is not on PATH)."""

from matlab.cli import app

if __name__ == "__main__":
    app()
