"""The `csbot` command line: `app` registers the commands, `common` holds what they share, one module per
command group."""
