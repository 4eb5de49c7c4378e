"""The commands of ``kling-prefect``, registered by name, and the option groups they share.

A command is a function ``run(args) -> exit code`` registered with :func:`command`, which also takes a
function adding its own arguments and which shared groups it has: ``clip_options`` (``--model``,
``--duration``, ``--mode``, ``--audio``, ``--multi-prompt``, ...) and ``run_options`` (``--out``,
``--run-key``, ``--max-cost``, ``--credentials-block``, ``-v``, ``--json``, ``--no-progress``, ...). A command
that makes clips plans them and hands the plan to :func:`kling_prefect.cli.run.run_plan`, which does the rest
(checks, Prefect, progress, the result, one line per failure).

Examples:
    A new command in a few lines:
    ```python
    from kling_prefect.cli.registry import command
    from kling_prefect.cli.run import run_plan


    def arguments(parser):
        parser.add_argument("file", metavar="FILE", help="the storyboard")


    @command("storyboard", help="clips from keyframes and prompts", arguments=arguments, run_options=True)
    def storyboard(args):
        plan = ...  # a kling_prefect.cli.plans.Plan: one PlannedClip per clip
        return run_plan(args, plan, lambda run: my_flow(file=args.file, **run))
    ```
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import NoReturn

from kling_prefect.cli.errors import EXIT_USAGE

__all__ = [
    "COMMANDS",
    "Command",
    "Parser",
    "add_clip_options",
    "add_run_options",
    "build_parser",
    "command",
]

Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One registered command."""

    name: str
    help: str
    run: Runner
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    epilog: str | None = None
    clip_options: bool = False
    run_options: bool = False


#: Every command, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str | None = None,
    epilog: str | None = None,
    clip_options: bool = False,
    run_options: bool = False,
) -> Callable[[Runner], Runner]:
    """Register the decorated ``run(args) -> exit code`` as command ``name``."""

    def register(run: Runner) -> Runner:
        COMMANDS[name] = Command(name, help, run, arguments, description, epilog, clip_options, run_options)
        return run

    return register


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (no usage dump) and the help's layout kept."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------------------------- argument types


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def seconds(minimum: float, maximum: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds in ``[minimum, maximum]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum:g} to {maximum:g} seconds, got {text}")
        return value

    return parse


def queries_per_second(text: str) -> float:
    """An argparse type: a rate of queries per second, greater than 0 (and at most 10,000)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of queries per second, got {text!r}") from None
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be greater than 0 and at most 10000 queries per second, got {text}")
    return value


def money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"must be an amount in USD such as 2.50, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount in USD, got {text!r}")
    return value


def run_key(text: str) -> str:
    from kling_prefect.exceptions import InvalidInput
    from kling_prefect.planning import check_run_key

    try:
        check_run_key(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return text


# --------------------------------------------------------------------------------------------- shared options


def add_clip_options(parser: argparse.ArgumentParser, *, models: str = "text-to-video") -> None:
    """How each clip is made: model, length, mode, sound, shape, shots."""
    from kling_prefect.models import REQUEST_MODELS, TEXT_TO_VIDEO_MODELS, describe_models

    listed = describe_models(TEXT_TO_VIDEO_MODELS if models == "text-to-video" else REQUEST_MODELS)
    group = parser.add_argument_group("clip options")
    group.add_argument("--model", default="kling-o3", help=f"the first clip's model: {listed}, or a full model id")
    group.add_argument(
        "--duration",
        type=whole_number(1, 15),
        metavar="S",
        help="seconds of every clip: the first clip takes S as its model allows (kling-o3 and kling-3.0: 3-15; "
        "kling-o1 and kling-2.6: 5 or 10); continuations (kling-o1 image-to-video from one frame) take 5 or 10, "
        "the nearer to S (5 for S up to 7). Default: 5",
    )
    group.add_argument(
        "--continuation-duration",
        type=int,
        choices=[5, 10],
        help="seconds of each continuation, 5 or 10, instead of the one --duration gives",
    )
    group.add_argument(
        "--mode",
        choices=["std", "pro"],
        help="std (cheaper) or pro, for every clip (kling-2.6 is pro only). Default: pro",
    )
    group.add_argument(
        "--audio",
        action="store_true",
        help="generate sound for the first clip (kling-o3: sound=on; kling-3.0, kling-2.6: generate_audio); "
        "continuations and kling-o1 have no sound",
    )
    group.add_argument(
        "--aspect-ratio", default="16:9", choices=["16:9", "9:16", "1:1"], help="shape of the video. Default: 16:9"
    )
    group.add_argument(
        "--multi-prompt",
        metavar="JSON|@FILE",
        help='the first clip as 1 to 6 shots (kling-o3, kling-3.0): a JSON list such as \'[{"prompt": "A door '
        'opens", "duration": 2}, {"prompt": "A cat walks in", "duration": 3}]\', or @FILE holding one; '
        "the shots' durations add up to the clip's (--duration defaults to their sum); every PROMPT then "
        "continues from it",
    )


def add_run_options(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """Where outputs go, how the run is identified, paid for, authenticated and shown."""
    from kling_prefect.planning import MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, RUN_KEY_MAX

    group = parser.add_argument_group("run options")
    group.add_argument("--out", metavar="DIR", help=out_help)
    group.add_argument(
        "--run-key",
        type=run_key,
        metavar="KEY",
        help=f"names the run (1-{RUN_KEY_MAX} letters, digits, '.', '_', '-'): re-run with the same key to resume "
        "its jobs instead of paying again. Default: the command, date and time",
    )
    group.add_argument(
        "--max-cost", type=money, metavar="USD", help="refuse to start, creating nothing, if the estimate is higher"
    )
    group.add_argument(
        "--credentials-block",
        metavar="NAME",
        help="a saved ShortAPICredentials block to use instead of SHORTAPI_KEY / SHORTAPI_BASE_URL",
    )
    group.add_argument("--s3-bucket-block", metavar="NAME", help="a saved prefect-aws S3Bucket block to store in")
    group.add_argument(
        "--poll-interval",
        type=seconds(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL),
        default=2.0,
        metavar="S",
        help=f"seconds between job queries once a job may be done ({MIN_POLL_INTERVAL:g}-{MAX_POLL_INTERVAL:g}). "
        "Default: 2",
    )
    group.add_argument(
        "--jobs-limit",
        metavar="NAME",
        help="a Prefect global concurrency limit on jobs in flight (create it with `kling-prefect setup`)",
    )
    group.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit steps whose earlier create may have been accepted (check the ShortAPI dashboard first)",
    )
    group.add_argument(
        "--max-queries-per-second",
        type=seconds(0, 10_000),
        metavar="N",
        help="cap on job queries per second, shared by every wait of the run (0: none; a credentials block's "
        "own setting wins). Default: SHORTAPI_MAX_QUERIES_PER_SECOND, else 10",
    )
    add_output_options(parser)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print the result as JSON on stdout (nothing else there)")
    group.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    group.add_argument(
        "-v", "--verbose", action="store_true", help="also show Prefect's logs (they always go to the flow run)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command."""
    from kling_prefect import __version__
    from kling_prefect.cli import commands  # noqa: F401  - registers the bundled commands

    parser = Parser(
        prog="kling-prefect",
        description="Kling video generation (through ShortAPI) as Prefect flows.",
        epilog="Every command checks its arguments and the budget before anything starts; see "
        "`kling-prefect COMMAND --help`. KLING_PREFECT_DEBUG=1 shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"kling-prefect {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for registered in COMMANDS.values():
        sub = subparsers.add_parser(
            registered.name,
            help=registered.help,
            description=registered.description or registered.help,
            epilog=registered.epilog,
        )
        if registered.arguments is not None:
            registered.arguments(sub)
        if registered.clip_options:
            add_clip_options(sub)
        if registered.run_options:
            add_run_options(sub, out_help="directory for the outputs. Default: ./kling-output/<run key>/")
    return parser
