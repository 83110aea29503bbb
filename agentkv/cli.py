"""The `agentkv` command: the parser of every subcommand (each family's flags and its `cmd_*` live in
agentkv/commands/) and the one place bad input becomes one line and exit 2. Heavy imports (torch, matplotlib)
happen inside the commands that need them, so `agentkv trace stats` starts fast."""

from __future__ import annotations

import argparse
import sys

from agentkv import __version__
from agentkv.cli_errors import Parser, UsageError, install_hint, run_guarded
from agentkv.commands import cache, generate, kv_eval, replay, report, serve, trace

COMMAND_EXTRAS = {"cmd_serve": "server", "cmd_replay": "replay", "cmd_generate": "engine", "cmd_kv_eval": "engine"}
ABOUT = ("agentkv: a prefix-shared, quantized, tiered KV cache for agentic LLM serving, and the trace tools, "
         "simulator and cost model that say what each lever buys. Start with `agentkv report` (what to deploy for "
         "an agentic workload), or `agentkv report TRACE` for your own traffic.")


def main(argv: list[str] | None = None) -> int:
    """Bad input ends in one line on stderr and exit 2, runtime failures in exit 1 (see cli_errors.py)."""

    def run() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):  # a command group without its subcommand: that group's commands
            getattr(args, "group", parser).print_help()
            return 2
        try:
            return args.run(args)
        except ModuleNotFoundError as e:  # the extra this command needs, where it provides the module
            hint = install_hint(e, COMMAND_EXTRAS.get(args.run.__name__))
            if hint is None:
                raise
            raise UsageError(hint) from None

    return run_guarded(run)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="agentkv", description=ABOUT)
    p.add_argument("--version", action="version", version=f"agentkv {__version__}")
    sub = p.add_subparsers(title="commands")
    for command in (trace, cache, replay, report, generate, serve, kv_eval):
        command.add_parser(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
