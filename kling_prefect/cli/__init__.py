"""``kling-prefect``: the command line, a thin front on the flows.

Commands: ``demo``, ``chain``, ``batch``, ``estimate``, ``emulator``, ``setup`` (``kling-prefect --help``).
Every argument, the output folder and the budget are checked before Prefect starts or anything is created;
a run shows one progress row per clip on stderr and its result on stdout; every expected failure ends with
one line on stderr saying what was wrong and what to do, and a non-zero exit status (2: bad arguments, 1: a
failed run, 130: interrupted). Prefect's own logs go to the flow run (and to the terminal with ``-v``).

The package: :mod:`~kling_prefect.cli.registry` (commands and shared options), :mod:`~kling_prefect.cli.commands`
(the bundled commands), :mod:`~kling_prefect.cli.plans` (clips planned from arguments),
:mod:`~kling_prefect.cli.run` (the shared run path), :mod:`~kling_prefect.cli.progress` (the display),
:mod:`~kling_prefect.cli.server` (a Prefect API that starts every time), :mod:`~kling_prefect.cli.terminal`
(what reaches the terminal) and :mod:`~kling_prefect.cli.errors` (one line per failure).

Examples:
    ```bash
    kling-prefect demo
    kling-prefect chain "A paper boat sets sail" "It drifts into a storm" --duration 5 --max-cost 2
    kling-prefect batch prompts.jsonl --max-concurrency 8 --max-cost 20 --json
    ```
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kling_prefect.cli.errors import Context, Failure, debug_enabled, explain
from kling_prefect.cli.registry import COMMANDS, build_parser, command

__all__ = ["COMMANDS", "build_parser", "command", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status. Failures print one line on stderr (see the module)."""
    from kling_prefect.cli.plans import flag_namer

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (Exception, KeyboardInterrupt) as exc:
        if debug_enabled():
            raise
        failure = exc if isinstance(exc, Failure) else explain(exc, Context(rename=flag_namer()))
        print(f"kling-prefect: error: {failure.line()}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    raise SystemExit(main())
