"""The `rollcall` command: a REST client of the rollcall API for people and scripts.

Its own package (and its own extra, ``client``) so the API server image carries no typer or rich.
"""
