"""Every `agentkv` subcommand, one module per command family, each with `add_parser(sub)` and its `cmd_*`;
`flags.py` holds the flags several share. The top floor: commands import the packages, never the reverse."""
