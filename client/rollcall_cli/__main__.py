"""``python -m rollcall_cli`` runs the same command as the ``rollcall`` entry point."""

from rollcall_cli.cli import app

app()
