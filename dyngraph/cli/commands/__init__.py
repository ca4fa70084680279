"""CLI subcommands. Each module here defines ``register(subparsers)``; :mod:`dyngraph.cli`
discovers them, so adding a command means adding a module, not editing a shared file."""
