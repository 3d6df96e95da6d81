"""One module per ``lesa`` subcommand group; each defines ``add_commands(subparsers)``."""
