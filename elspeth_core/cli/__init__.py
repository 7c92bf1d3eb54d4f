"""The ``elspeth`` command line (Typer + rich). One module per command group."""
