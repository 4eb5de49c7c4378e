"""``kling-prefect``: the command line, a thin front on the flows.

Commands: ``demo``, ``chain``, ``batch``, ``estimate``, ``emulator``, ``setup``. Every request is validated and
the budget checked before Prefect starts or anything is created; bad arguments exit non-zero with one line.

``--model`` takes ``kling-o1``, ``kling-o3`` (the default), ``kling-3.0``, ``kling-2.6`` or a full model id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from kling_prefect.pricing import format_usd

EXIT_USAGE = 2
EXIT_FAILED = 1
DEMO_PROMPTS = [
    "A paper boat is set on a calm canal at sunrise, soft golden light, cinematic",
    "The paper boat drifts under an old stone bridge as ripples catch the light",
    "The paper boat glides into a wide sunny harbour full of colourful sailboats",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _flow_check(check: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run one of the flows' own parameter checks while parsing arguments, failing as an argparse error."""
    from kling_prefect.exceptions import InvalidInput

    try:
        check(*args, **kwargs)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _concurrency(text: str) -> int:
    from kling_prefect.planning import MAX_CONCURRENCY, check_number

    value = _positive_int(text)
    _flow_check(check_number, "max_concurrency", value, minimum=1, maximum=MAX_CONCURRENCY)
    return value


def _poll_seconds(text: str) -> float:
    from kling_prefect.planning import MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, check_number

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    _flow_check(check_number, "poll_interval", value, minimum=MIN_POLL_INTERVAL, maximum=MAX_POLL_INTERVAL)
    return value


def _run_key(text: str) -> str:
    from kling_prefect.planning import check_run_key

    _flow_check(check_run_key, text)
    return text


def _money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount in USD, got {text!r}")
    return value


def _add_run_options(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    from kling_prefect.models import TEXT_TO_VIDEO_MODELS, describe_models

    parser.add_argument(
        "--model", default="kling-o3", help=f"{describe_models(TEXT_TO_VIDEO_MODELS)} or a full model id"
    )
    parser.add_argument("--out", help=out_help)
    parser.add_argument(
        "--run-key", type=_run_key, help="re-use to resume the jobs of an earlier run instead of paying again"
    )
    parser.add_argument("--max-cost", type=_money, metavar="USD", help="refuse to start if the estimate is higher")
    parser.add_argument("--credentials-block", help="name of a saved ShortAPICredentials block (default: env)")
    parser.add_argument("--s3-bucket-block", help="name of a saved prefect-aws S3Bucket block to store outputs in")
    parser.add_argument("--poll-interval", type=_poll_seconds, default=2.0, help="shortest seconds between job queries")
    parser.add_argument("--jobs-limit", help="name of a Prefect global concurrency limit on jobs in flight")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit steps whose earlier create may have been accepted (check the ShortAPI dashboard first)",
    )


def build_parser() -> argparse.ArgumentParser:
    from kling_prefect.models import describe_models

    parser = _Parser(prog="kling-prefect", description="Kling video generation as Prefect flows.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="run the continuation flow against the bundled emulator")
    demo.add_argument("--out", default="kling-output", help="output directory (default ./kling-output)")
    demo.add_argument("--time-scale", type=float, default=0.02, help="emulator speed (0.02 = 50x faster)")
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--no-progress", action="store_true")

    chain = commands.add_parser("chain", help="text-to-video, then continuations from each last frame, joined")
    chain.add_argument("prompts", nargs="+", metavar="PROMPT")
    chain.add_argument("--duration", type=int, help="seconds of the first clip (model default if unset)")
    chain.add_argument("--aspect-ratio", default="16:9", choices=["16:9", "9:16", "1:1"])
    chain.add_argument("--mode", choices=["std", "pro"], help="mode of the first clip")
    chain.add_argument("--continuation-duration", type=int, default=5, choices=[5, 10])
    _add_run_options(chain, out_help="directory for the clips and final.mp4 (default ./kling-output/<run key>)")

    batch = commands.add_parser("batch", help="many prompts from a JSONL or CSV file, concurrently")
    batch.add_argument("file", metavar="FILE")
    batch.add_argument("--max-concurrency", type=_concurrency, default=4)
    _add_run_options(batch, out_help="directory for the clips (default ./kling-output/<run key>)")

    estimate = commands.add_parser("estimate", help="what a request, chain or batch file would cost (no API call)")
    estimate.add_argument("prompts", nargs="*", metavar="PROMPT", help="one prompt, or several for a chain")
    estimate.add_argument("--file", help="a JSONL or CSV batch file instead of prompts")
    estimate.add_argument("--model", default="kling-o3", help=f"{describe_models()} or a full model id")
    estimate.add_argument("--duration", type=int)
    estimate.add_argument("--mode", choices=["std", "pro"])
    estimate.add_argument("--audio", action="store_true", help="with generated audio (sound/generate_audio)")
    estimate.add_argument("--continuation-duration", type=int, default=5, choices=[5, 10])
    estimate.add_argument("--json", action="store_true")

    emulator = commands.add_parser("emulator", help="serve the bundled ShortAPI emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8787)
    emulator.add_argument("--time-scale", type=float, default=1.0, help="job-time multiplier (0.01 = 100x faster)")
    emulator.add_argument("--api-key", help="accept only this bearer key (default: any non-empty key)")
    emulator.add_argument("--fail-rate", type=float, default=0.0, help="probability a job fails")
    emulator.add_argument("--seed", type=int)

    setup = commands.add_parser("setup", help="register blocks and create the shared jobs-in-flight limit")
    setup.add_argument("--jobs-limit-name", default="kling-jobs-in-flight")
    setup.add_argument("--jobs-limit", type=_positive_int, default=5, help="jobs in flight across all workers")
    setup.add_argument("--creates-per-second", type=float, help="also create a rate limit on job creates")
    setup.add_argument("--create-limit-name", default="kling-job-creates")
    return parser


# --------------------------------------------------------------------------------------------- output


class _Bar:
    """A rich progress bar per step on stderr, fed by :mod:`kling_prefect.progress` events."""

    def __init__(self, enabled: bool) -> None:
        forced = os.environ.get("KLING_PREFECT_FORCE_PROGRESS") == "1"
        self.enabled = enabled and (sys.stderr.isatty() or forced)
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._consoles: list[tuple[Any, Any]] = []

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
            # Prefect's console handlers print through their own rich Console; while the bar is live, print
            # through the bar's console instead, so log lines appear above the bar rather than through it.
            from prefect.logging.handlers import PrefectConsoleHandler

            loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
            for handler in {h for logger in loggers for h in getattr(logger, "handlers", ())}:
                if isinstance(handler, PrefectConsoleHandler):
                    self._consoles.append((handler, handler.console))
                    handler.console = self._progress.console
        return self

    def __call__(self, event: Any) -> None:
        if self._progress is None:
            return
        if event.step not in self._tasks:
            self._tasks[event.step] = self._progress.add_task(event.step, total=100, state="")
        self._progress.update(self._tasks[event.step], completed=event.fraction * 100, state=event.state)

    def __exit__(self, *exc: object) -> None:
        for handler, console in self._consoles:
            handler.console = console
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line (newlines in ``message`` are folded) on stderr and exit with ``code``."""
    line = re.sub(r"\s*\n\s*", " ", message.strip())
    print(f"kling-prefect: error: {line}", file=sys.stderr)
    raise SystemExit(code)


def _print_result(result: Any, as_json: bool) -> None:
    data = result.as_dict()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for clip in data["clips"]:
        where = clip["uri"] or clip["error"]
        print(f"{clip['step']}: {clip['status']}  job {clip['job_id'] or '-'}  {where}")
    if data["final"]:
        print(f"final video: {data['final']['local_path'] or data['final']['uri']}")
    print(
        f"{data['stored']}/{len(data['clips'])} stored, {data['video_seconds']} s of video, "
        f"estimated {format_usd(Decimal(data['estimated_cost_usd']))}, "
        f"vendor-reported {format_usd(Decimal(data['vendor_amount_usd']))}"
    )
    if data["summary_artifact"]:
        table = data["summary_artifact"].removesuffix("-summary") + "-clips"
        print(f"Prefect artifacts: {data['summary_artifact']} (with pictures) and {table}")


def _run_flow(make: Callable[[], Any], *, progress_enabled: bool) -> Any:
    from kling_prefect import progress

    with _Bar(progress_enabled) as bar, progress.subscribe(bar):
        return asyncio.run(make())


# --------------------------------------------------------------------------------------------- commands


def _check_credentials(block: str | None) -> None:
    """Without a block, the environment must hold a usable key and valid settings (checked, never printed)."""
    if block is not None:
        return
    if not os.environ.get("SHORTAPI_KEY", "").strip():
        _fail(
            "no ShortAPI key: set SHORTAPI_KEY (and SHORTAPI_BASE_URL for a proxy/emulator) or pass --credentials-block"
        )
    from kling_prefect.credentials import ShortAPICredentials

    try:
        ShortAPICredentials.from_env()
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


def _run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters every run command shares (see ``_add_run_options``)."""
    return {
        "run_key": args.run_key,
        "max_cost_usd": float(args.max_cost) if args.max_cost is not None else None,
        "output_dir": args.out,
        "s3_bucket_block": args.s3_bucket_block,
        "credentials_block": args.credentials_block,
        "poll_interval": args.poll_interval,
        "jobs_limit": args.jobs_limit,
        "resubmit_uncertain": args.resubmit_uncertain,
    }


def cmd_chain(args: argparse.Namespace) -> int:
    from kling_prefect import flows, planning

    planned = planning.plan_chain(
        args.model,
        args.prompts,
        duration=args.duration,
        aspect_ratio=args.aspect_ratio,
        mode=args.mode,
        continuation_duration=args.continuation_duration,
    )
    planning.check_budget(planned, args.max_cost)
    _check_credentials(args.credentials_block)
    result = _run_flow(
        lambda: flows.continuation(
            prompts=args.prompts,
            model=args.model,
            duration=args.duration,
            aspect_ratio=args.aspect_ratio,
            mode=args.mode,
            continuation_duration=args.continuation_duration,
            **_run_parameters(args),
        ),
        progress_enabled=not args.no_progress,
    )
    _print_result(result, args.json)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from kling_prefect import flows, planning
    from kling_prefect.batchfile import load_batch_items

    items = load_batch_items(file=args.file, default_model=args.model)
    planning.check_budget([item.request for item in items], args.max_cost)
    _check_credentials(args.credentials_block)
    result = _run_flow(
        lambda: flows.batch(
            file=str(Path(args.file).resolve()),
            model=args.model,
            max_concurrency=args.max_concurrency,
            fail_on_error=False,
            **_run_parameters(args),
        ),
        progress_enabled=not args.no_progress,
    )
    _print_result(result, args.json)
    return EXIT_FAILED if result.failed else 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from kling_prefect import planning
    from kling_prefect.batchfile import load_batch_items
    from kling_prefect.models import request_model_for
    from kling_prefect.pricing import estimate_cost

    if bool(args.prompts) == bool(args.file):
        _fail("give PROMPT(s) or --file, not both and not neither", EXIT_USAGE)
    if args.file:
        requests = [item.request for item in load_batch_items(file=args.file, default_model=args.model)]
    else:
        audio: dict[str, Any] = {}
        if args.audio:
            fields = request_model_for(args.model).model_fields
            audio = {"sound": "on"} if "sound" in fields else {"generate_audio": True}
        requests = planning.plan_chain(
            args.model,
            args.prompts,
            duration=args.duration,
            aspect_ratio=None,
            mode=args.mode,
            continuation_duration=args.continuation_duration,
            options=audio,
        )
    rows = [
        {
            "model": r.model_id,
            "mode": getattr(r, "mode", ""),
            "seconds": r.video_seconds,
            "audio": r.has_audio,
            "usd": str(estimate_cost(r)),
        }
        for r in requests
    ]
    total = planning.check_budget(requests, None)
    if args.json:
        print(json.dumps({"requests": rows, "total_usd": str(total)}, indent=2))
    else:
        for row in rows:
            sound = "audio" if row["audio"] else "silent"
            usd = format_usd(Decimal(row["usd"]))
            print(f"{row['model']:34} {row['mode']:4} {row['seconds']:>3} s  {sound:6} {usd}")
        seconds = sum(int(r["seconds"]) for r in rows)
        print(f"total: {format_usd(total)} for {len(rows)} job(s), {seconds} s of video")
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from kling_prefect.emulator import run

    run(
        args.host, args.port, time_scale=args.time_scale, api_key=args.api_key, fail_rate=args.fail_rate, seed=args.seed
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kling_prefect import flows
    from kling_prefect.emulator import Emulator

    # Offline by design: Prefect's local server would otherwise log failed telemetry calls.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    run_key = time.strftime("demo-%Y%m%d-%H%M%S")
    out = Path(args.out) / run_key
    print(
        "starting the bundled ShortAPI emulator and a local Prefect server (first start takes ~15 s)...",
        file=sys.stderr,
    )
    with Emulator(time_scale=args.time_scale, seed=1) as emulator:
        os.environ["SHORTAPI_KEY"] = "demo-key-for-the-local-emulator"
        os.environ["SHORTAPI_BASE_URL"] = emulator.base_url
        result = _run_flow(
            lambda: flows.continuation(
                prompts=DEMO_PROMPTS,
                model="kling-o3",
                run_key=run_key,
                output_dir=str(out),
                poll_interval=0.25,
                max_cost_usd=5.0,
            ),
            progress_enabled=not args.no_progress,
        )
    _print_result(result, args.json)
    if not args.json:
        print(f"clips, thumbnails and final.mp4 are in {out.resolve()}")
        print("artifacts are in Prefect's local database: `prefect server start`, then open the run's Artifacts tab")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from kling_prefect.concurrency import setup_limits

    for line in asyncio.run(
        setup_limits(args.jobs_limit_name, args.jobs_limit, args.creates_per_second, args.create_limit_name)
    ):
        print(line)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "chain": cmd_chain,
    "batch": cmd_batch,
    "estimate": cmd_estimate,
    "emulator": cmd_emulator,
    "setup": cmd_setup,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from kling_prefect.exceptions import BatchInputError, BudgetExceeded, InvalidInput, ShortAPIError
    from kling_prefect.planning import describe_validation_error

    try:
        return COMMANDS[args.command](args)
    except SystemExit:
        raise
    except ValidationError as exc:
        _fail(f"invalid request: {describe_validation_error(exc)}", EXIT_USAGE)
    except BatchInputError as exc:
        shown = "; ".join(exc.problems[:10]) + (
            f"; ... and {len(exc.problems) - 10} more" if len(exc.problems) > 10 else ""
        )
        _fail(f"{len(exc.problems)} invalid batch item(s), nothing was created: {shown}", EXIT_USAGE)
    except (BudgetExceeded, InvalidInput) as exc:
        _fail(str(exc), EXIT_USAGE)
    except KeyError as exc:
        _fail(str(exc.args[0]) if exc.args else "unknown key", EXIT_USAGE)
    except (ShortAPIError, ValueError, OSError) as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted; re-run with the same --run-key to resume the jobs already created", 130)
    except Exception as exc:  # anything else: still one line, never a traceback (texts carry no secrets)
        if os.environ.get("KLING_PREFECT_DEBUG") == "1":
            raise
        _fail(f"{type(exc).__name__}: {exc} (set KLING_PREFECT_DEBUG=1 for a traceback)")


if __name__ == "__main__":
    raise SystemExit(main())
