"""The `zorba` command line: the typer app (app.py), the options `run` and `flower-sim` share
(options.py) and one file per other command. The top layer: it may import every other one, and
nothing imports it but zorba.__main__."""
