"""`python -m adapters.cli`: the same as the `csbot` script."""

from adapters.cli.app import main

main()
