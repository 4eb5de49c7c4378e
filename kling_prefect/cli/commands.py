"""The bundled commands: ``demo``, ``chain``, ``batch``, ``storyboard``, ``estimate``, ``emulator``, ``setup``,
``callbacks``.

Each is registered with :func:`~kling_prefect.cli.registry.command`; the clip-making ones plan their clips
(:mod:`kling_prefect.cli.plans`) and hand the plan to :func:`~kling_prefect.cli.run.run_plan`.

Examples:
    ```bash
    kling-prefect chain "A paper boat sets sail" "It drifts into a storm" --duration 5 --max-cost 2
    kling-prefect estimate "A fox" --model kling-o1-i2v --duration 10
    kling-prefect storyboard dawn.png noon.png dusk.png --prompt "The sun climbs" --prompt "It sets" --max-cost 2
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from kling_prefect.callback_relay import HEARTBEAT_SECONDS, MAX_CALLBACKS_PER_SECOND
from kling_prefect.cli.errors import EXIT_USAGE, Context, Failure, debug_enabled, explain
from kling_prefect.cli.plans import Plan, PlannedClip, chain_plan, flag_namer, image_to_video_plan, is_image_to_video
from kling_prefect.cli.registry import add_output_options, command, queries_per_second, whole_number
from kling_prefect.cli.run import default_run_key, run_plan
from kling_prefect.waiting.querycap import DEFAULT_QUERY_RATE_LIMIT, ENV_QUERY_RATE_LIMIT

__all__ = ["BATCH_FORMATS", "DEMO_PROMPTS"]

DEMO_PROMPTS = [
    "A paper boat is set on a calm canal at sunrise, soft golden light, cinematic",
    "The paper boat drifts under an old stone bridge as ripples catch the light",
    "The paper boat glides into a wide sunny harbour full of colourful sailboats",
]

BATCH_FORMATS = """\
FILE is JSONL (one JSON object per line; blank lines and lines starting with # are skipped):
  {"prompt": "A fox in the snow", "duration": 10}
  {"prompt": "A city at night", "model": "kling-2.6", "generate_audio": true}

or CSV (a header row with a 'prompt' column; other columns are request fields; empty cells are skipped;
true/false for booleans; JSON for lists):
  prompt,duration,model,generate_audio
  A fox in the snow,10,,
  A city at night,5,kling-2.6,true

Each item may set "model" (else --model) and any field of that model's request (duration, mode, sound,
generate_audio, negative_prompt, aspect_ratio, multi_shot, ...). Every item is checked, and the budget, before
anything is created: `kling-prefect estimate --file FILE` prices a file without running it."""


# --------------------------------------------------------------------------------------------- chain


def _chain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompts",
        nargs="*",
        metavar="PROMPT",
        help="the first clip's prompt (text-to-video with --model), then one per continuation, each starting "
        "from the previous clip's last frame (kling-o1 image-to-video)",
    )


@command(
    "chain",
    help="text-to-video, then a continuation from each clip's last frame, joined into final.mp4",
    arguments=_chain_arguments,
    clip_options=True,
    run_options=True,
    epilog="Outputs: clip-01.mp4, clip-02.mp4, ... and final.mp4 under --out, with a thumbnail and a record of "
    "each job; the run's summary, table and progress are Prefect artifacts.",
)
def chain(args: argparse.Namespace) -> int:
    from kling_prefect import flows

    context = _clip_context(args)
    try:
        plan = chain_plan(args)
    except Exception as exc:
        raise _usage(exc, context) from None
    parameters = plan.flow_parameters
    return run_plan(
        args,
        plan,
        lambda run: flows.continuation(**parameters, **run, return_state=True),
        context=context,
    )


def _clip_context(args: argparse.Namespace) -> Context:
    """Names for errors: with --multi-prompt the first clip has no PROMPT, so the flow's prompts[2] is PROMPT 1."""
    return Context(rename=flag_namer(first_prompt=0 if getattr(args, "multi_prompt", None) else 1))


def _usage(error: Exception, context: Context) -> Exception:
    """An error of planning (before anything started), as one line naming the flag (``KLING_PREFECT_DEBUG=1``:
    the error itself, for its traceback)."""
    return error if debug_enabled() else explain(error, context)


# --------------------------------------------------------------------------------------------- batch


def _batch_arguments(parser: argparse.ArgumentParser) -> None:
    from kling_prefect.models import REQUEST_MODELS, describe_models
    from kling_prefect.planning import MAX_CONCURRENCY

    parser.add_argument("file", metavar="FILE", help="a JSONL or CSV file of prompts (formats below)")
    parser.add_argument(
        "--model", default="kling-o3", help=f"model of items that name none: {describe_models(REQUEST_MODELS)}"
    )
    parser.add_argument(
        "--max-concurrency",
        type=whole_number(1, MAX_CONCURRENCY),
        default=4,
        metavar="N",
        help=f"jobs in flight at once, 1-{MAX_CONCURRENCY}. Default: 4",
    )
    parser.add_argument(
        "--item-names",
        choices=["position", "content"],
        default="position",
        help="position: each item is a step named by its line (item-0001, ...); content: named by what it "
        "makes, so runs given one --run-key over overlapping files make and pay for an item once. "
        "Default: position",
    )


@command(
    "batch",
    help="many prompts from a JSONL or CSV file, several at once",
    arguments=_batch_arguments,
    run_options=True,
    epilog=BATCH_FORMATS,
)
def batch(args: argparse.Namespace) -> int:
    from kling_prefect import flows
    from kling_prefect.batchfile import load_batch_items

    context = Context(rename=flag_namer())
    try:
        items = load_batch_items(file=args.file, default_model=args.model, names=args.item_names)
    except Exception as exc:
        raise _usage(exc, context) from None
    plan = Plan(
        clips=tuple(PlannedClip(item.step, _prompt(item.request), item.request) for item in items),
        concurrency=min(args.max_concurrency, len(items)),
    )
    path = str(Path(args.file).resolve())
    return run_plan(
        args,
        plan,
        lambda run: flows.batch(
            file=path,
            model=args.model,
            max_concurrency=args.max_concurrency,
            item_names=args.item_names,
            **run,
            return_state=True,
        ),
        context=context,
    )


def _prompt(request: Any) -> str:
    return str(getattr(request, "prompt", "") or "")


# --------------------------------------------------------------------------------------------- storyboard


def _storyboard_arguments(parser: argparse.ArgumentParser) -> None:
    from kling_prefect.planning import MAX_CONCURRENCY

    parser.add_argument(
        "keyframes",
        nargs="+",
        metavar="KEYFRAME",
        help="2 or more images (PNG, JPEG or WebP files, or http(s) URLs), all of one aspect ratio: clip k goes "
        "from keyframe k to keyframe k+1",
    )
    _add_storyboard_clip_options(parser, required=True)
    parser.add_argument(
        "--duration",
        type=whole_number(3, 10),
        default=5,
        metavar="S",
        help="seconds of each clip, 3-10 (kling-o1 image-to-video from two frames). Default: 5",
    )
    parser.add_argument("--mode", choices=["std", "pro"], default="pro", help="mode of every clip. Default: pro")
    parser.add_argument(
        "--max-concurrency",
        type=whole_number(1, MAX_CONCURRENCY),
        default=4,
        metavar="N",
        help=f"clips made at once, 1-{MAX_CONCURRENCY}. Default: 4",
    )


def _add_storyboard_clip_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_argument_group("storyboard clips")
    group.add_argument(
        "--prompt",
        action="append",
        dest="storyboard_prompts",
        metavar="TEXT",
        required=required,
        help="one per clip, in order (N keyframes make N-1 clips); name a cast member as [@element1]",
    )
    group.add_argument(
        "--cast",
        action="append",
        metavar="IMAGE",
        help="a subject kept the same in every clip: its frontal image (file or URL); repeat for more (at most 5)",
    )


def storyboard_namer(where: str) -> str:
    """The storyboard's parameters as its command line calls them (counted from 1, as the planner does)."""
    import re

    found = re.fullmatch(r"(keyframes|prompts|cast)\[(\d+)\]", where)
    if found:
        return {"keyframes": "KEYFRAME", "prompts": "--prompt", "cast": "--cast"}[found[1]] + f" {found[2]}"
    names = {"keyframes": "KEYFRAME", "prompts": "--prompt", "cast": "--cast", "duration": "--duration"}
    return names.get(where, flag_namer()(where))


def storyboard_plan(args: argparse.Namespace) -> tuple[Plan, list[str], list[str | dict[str, Any]]]:
    """The clips of a storyboard (checked: files read, URLs fetched), its keyframes and cast as the flow takes
    them (local files as absolute paths)."""
    from kling_prefect.planning import plan_storyboard

    def absolute(source: str) -> str:
        return source if "://" in source else str(Path(source).expanduser().resolve())

    keyframes = [absolute(k) for k in args.keyframes]
    cast: list[str | dict[str, Any]] = [absolute(c) for c in (args.cast or [])]
    prompts = list(args.storyboard_prompts or [])
    planned = plan_storyboard(
        keyframes, prompts, duration=args.duration or 5, mode=args.mode or "pro", cast=cast or None
    )
    clips = tuple(
        PlannedClip(f"clip-{index:02d}", prompt, request)
        for index, (prompt, request) in enumerate(zip(prompts, planned.requests, strict=True), start=1)
    )
    return Plan(clips=clips, concurrency=min(getattr(args, "max_concurrency", 1), len(clips))), keyframes, cast


@command(
    "storyboard",
    help="clips from keyframe to keyframe (kling-o1 image-to-video, first and last frame), joined into final.mp4",
    arguments=_storyboard_arguments,
    run_options=True,
    epilog="Every keyframe is read and checked (an image the vendor can take, one aspect ratio) before anything "
    "is created. Outputs: clip-01.mp4, ... and final.mp4 under --out; the summary shows each keyframe beside the "
    "final video at its point. `kling-prefect estimate --keyframes ... --prompt ...` prices one.",
)
def storyboard(args: argparse.Namespace) -> int:
    from kling_prefect import flows

    context = Context(rename=storyboard_namer)
    try:
        plan, keyframes, cast = storyboard_plan(args)
    except Exception as exc:
        raise _usage(exc, context) from None
    return run_plan(
        args,
        plan,
        lambda run: flows.storyboard(
            keyframes=keyframes,
            prompts=[clip.prompt for clip in plan.clips],
            duration=args.duration,
            mode=args.mode,
            cast=cast or None,
            max_concurrency=args.max_concurrency,
            **run,
            return_state=True,
        ),
        context=context,
    )


# --------------------------------------------------------------------------------------------- estimate


def _estimate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompts",
        nargs="*",
        metavar="PROMPT",
        help="one prompt, or several for a chain (with kling-o1-i2v: one image-to-video clip each)",
    )
    parser.add_argument("--file", metavar="FILE", help="a JSONL or CSV batch file instead of PROMPTs")
    parser.add_argument(
        "--keyframes",
        nargs="+",
        metavar="KEYFRAME",
        help="price a storyboard: its keyframes (checked, as `storyboard` does), with one --prompt per clip",
    )
    _add_storyboard_clip_options(parser, required=False)
    parser.add_argument("--max-cost", type=_money, metavar="USD", help="fail (exit 2) if the total is higher")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def _money(text: str) -> Any:
    from kling_prefect.cli.registry import money

    return money(text)


@command(
    "estimate",
    help="what a clip, a chain or a batch file would cost (no API call, no Prefect)",
    arguments=_estimate_arguments,
    clip_options=True,
    epilog="Prices are the vendor's documented rates per second of video; the vendor reports its own charge "
    "(amount) when a job is created, and runs keep both.",
)
def estimate(args: argparse.Namespace) -> int:
    from kling_prefect.batchfile import load_batch_items
    from kling_prefect.planning import check_budget
    from kling_prefect.pricing import estimate_cost, format_usd

    context = _clip_context(args)
    try:
        if args.file and args.prompts:
            raise Failure("give PROMPTs or --file, not both", code=EXIT_USAGE)
        if args.keyframes:
            if args.file or args.prompts:
                raise Failure("a storyboard takes --keyframes and --prompt, not PROMPTs or --file", code=EXIT_USAGE)
            context = Context(rename=storyboard_namer)
            plan = storyboard_plan(args)[0]
        elif args.file:
            items = load_batch_items(file=args.file, default_model=args.model)
            plan = Plan(clips=tuple(PlannedClip(i.step, _prompt(i.request), i.request) for i in items))
        elif is_image_to_video(args.model):
            plan = image_to_video_plan(args)
        else:
            plan = chain_plan(args)
        total = check_budget(plan.requests, args.max_cost, name="--max-cost")
    except Exception as exc:
        raise _usage(exc, context) from None
    rows = [
        {
            "step": clip.step,
            "model": clip.request.model_id,
            "short_name": clip.request.short_name,
            "mode": clip.request.mode_name,
            "seconds": clip.request.video_seconds,
            "audio": clip.request.has_audio,
            "usd": str(estimate_cost(clip.request)),
        }
        for clip in plan.clips
    ]
    if args.json:
        print(json.dumps({"requests": rows, "total_usd": str(total), "video_seconds": plan.video_seconds}, indent=2))
        return 0
    for row in rows:
        sound = "audio" if row["audio"] else "silent"
        usd = format_usd(estimate_cost(plan.clips[rows.index(row)].request))
        print(f"{row['step']:9} {row['short_name']:13} {row['mode']:4} {row['seconds']:>3} s  {sound:6} {usd:>8}")
    jobs = f"{len(rows)} job" + ("s" if len(rows) != 1 else "")
    print(f"total: {format_usd(total)} for {jobs}, {plan.video_seconds} s of video")
    return 0


# --------------------------------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="kling-output", metavar="DIR", help="output directory. Default: ./kling-output"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.02,
        metavar="X",
        help="emulator job-time multiplier (0.02: 50x faster than the vendor's typical times). Default: 0.02",
    )
    add_output_options(parser)
    parser.set_defaults(
        max_cost=None,
        credentials_block=None,
        s3_bucket_block=None,
        poll_interval=0.25,
        jobs_limit=None,
        resubmit_uncertain=False,
    )


@command(
    "demo",
    help="the continuation flow on three sample prompts, against the bundled emulator (no account needed)",
    arguments=_demo_arguments,
)
def demo(args: argparse.Namespace) -> int:
    from decimal import Decimal

    from kling_prefect import flows
    from kling_prefect.emulator import Emulator

    # Offline by design: Prefect's local server would otherwise try to send telemetry.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    args.run_key = default_run_key("demo")
    args.out = str(Path(args.out) / args.run_key)
    args.max_cost = Decimal(5)
    args.prompts, args.model, args.duration, args.continuation_duration = DEMO_PROMPTS, "kling-o3", 5, 5
    args.mode, args.audio, args.aspect_ratio, args.multi_prompt = None, False, "16:9", None
    plan = chain_plan(args)
    with Emulator(time_scale=args.time_scale, seed=1) as emulator:
        os.environ["SHORTAPI_KEY"] = "demo-key-for-the-local-emulator"
        os.environ["SHORTAPI_BASE_URL"] = emulator.base_url
        code = run_plan(args, plan, lambda run: flows.continuation(**plan.flow_parameters, **run, return_state=True))
    if not args.json:
        print(f"clips, thumbnails and final.mp4 are in {Path(args.out).resolve()}")
    return code


# --------------------------------------------------------------------------------------------- emulator, setup


def _emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on. Default: 127.0.0.1")
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535),
        default=8787,
        help="port to listen on, 0-65535 (0: any free one). Default: 8787",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="job-time multiplier (0.01: 100x faster than the vendor's typical times). Default: 1",
    )
    parser.add_argument("--api-key", help="accept only this bearer key. Default: any non-empty key")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, metavar="P", help="probability (0-1) that a job fails. Default: 0"
    )
    parser.add_argument("--seed", type=int, help="random seed, for repeatable job times and failures")
    parser.add_argument(
        "--account-concurrency",
        type=whole_number(1),
        metavar="N",
        help="refuse creates while N jobs run, as Kling does (HTTP 429, code 1303), at least 1. Default: no limit",
    )


@command(
    "emulator",
    help="serve the bundled ShortAPI emulator (for development: SHORTAPI_BASE_URL=http://HOST:PORT)",
    arguments=_emulator_arguments,
)
def emulator(args: argparse.Namespace) -> int:
    from kling_prefect.emulator import run

    if not 0 <= args.fail_rate <= 1:
        raise Failure(f"--fail-rate: must be from 0 to 1, got {args.fail_rate:g}", code=EXIT_USAGE)
    if args.time_scale <= 0:
        raise Failure(f"--time-scale: must be greater than 0, got {args.time_scale:g}", code=EXIT_USAGE)
    run(
        args.host,
        args.port,
        time_scale=args.time_scale,
        api_key=args.api_key,
        fail_rate=args.fail_rate,
        seed=args.seed,
        account_concurrency=args.account_concurrency,
    )
    return 0


def _setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs-limit-name",
        default="kling-jobs-in-flight",
        metavar="NAME",
        help="name of the global concurrency limit on jobs in flight. Default: kling-jobs-in-flight",
    )
    parser.add_argument(
        "--jobs-limit",
        type=whole_number(1),
        default=5,
        metavar="N",
        help="jobs in flight across all workers, at least 1. Default: 5",
    )
    parser.add_argument(
        "--creates-per-second",
        type=float,
        metavar="R",
        help="also create a rate limit of R job creates per second (greater than 0)",
    )
    parser.add_argument(
        "--create-limit-name",
        default="kling-job-creates",
        metavar="NAME",
        help="name of that rate limit. Default: kling-job-creates",
    )
    parser.add_argument(
        "--max-queries-per-second",
        type=queries_per_second,
        metavar="N",
        help="also one rate of job queries for the whole account: a rate limit of N queries a second (more "
        "than 0, at most 10000) that every process using this Prefect server keeps to, as well as its own cap",
    )
    parser.add_argument(
        "--query-limit-name",
        default=DEFAULT_QUERY_RATE_LIMIT,
        metavar="NAME",
        help=f"name of that rate limit (processes look for another name in {ENV_QUERY_RATE_LIMIT}). "
        f"Default: {DEFAULT_QUERY_RATE_LIMIT}",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's logs")


@command(
    "setup",
    help="register the blocks and create the shared jobs-in-flight limit (and, if asked, create and query rates) "
    "on the Prefect server",
    arguments=_setup_arguments,
)
def setup(args: argparse.Namespace) -> int:
    from kling_prefect.cli.server import prefect_api
    from kling_prefect.cli.terminal import terminal_logs
    from kling_prefect.concurrency import setup_limits

    if args.creates_per_second is not None and args.creates_per_second <= 0:
        raise Failure(f"--creates-per-second: must be greater than 0, got {args.creates_per_second:g}", code=EXIT_USAGE)
    with terminal_logs(verbose=args.verbose), prefect_api(verbose=args.verbose, status=lambda text: None) as api:
        lines = asyncio.run(
            setup_limits(
                args.jobs_limit_name,
                args.jobs_limit,
                args.creates_per_second,
                args.create_limit_name,
                max_queries_per_second=args.max_queries_per_second,
                query_limit_name=args.query_limit_name,
            )
        )
    for line in lines:
        print(line)
    if api.temporary:
        print("note: no PREFECT_API_URL, so this went to the temporary server's database in PREFECT_HOME")
        if args.max_queries_per_second:
            print("note: processes share the query rate only through a Prefect server they all use (PREFECT_API_URL)")
    return 0


# --------------------------------------------------------------------------------------------- callbacks


def _callbacks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["serve", "webhook-template"],
        help="serve: run the callback relay until interrupted; webhook-template: print the Prefect Cloud webhook "
        "template that turns the vendor's callbacks into the same events (no relay to run)",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8788",
        metavar="HOST:PORT",
        help="address the relay binds (behind the public URL the vendor calls). Default: 127.0.0.1:8788",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help=f"seconds between the heartbeats workers listen for, 0-3600 (0: none). Default: {HEARTBEAT_SECONDS:g}",
    )
    parser.add_argument(
        "--max-per-second",
        type=float,
        default=MAX_CALLBACKS_PER_SECOND,
        metavar="N",
        help="callbacks accepted per second, 1-100000 (more are answered 429, nothing published; the waits' "
        f"polls find those jobs). Default: {MAX_CALLBACKS_PER_SECOND:g}",
    )


@command(
    "callbacks",
    help="serve the callback relay (or print a Prefect Cloud webhook template): the vendor's callbacks become "
    "Prefect events every worker hears",
    arguments=_callbacks_arguments,
    epilog="Workers: SHORTAPI_CALLBACK_URL=<the relay's public URL> SHORTAPI_CALLBACK_MODE=relay, and the same "
    "PREFECT_API_URL as the relay. With a Prefect Cloud webhook instead: prefect cloud webhook create "
    'kling-callbacks --template "$(kling-prefect callbacks webhook-template)", then SHORTAPI_CALLBACK_URL=<the '
    "webhook's URL> SHORTAPI_CALLBACK_MODE=webhook.",
)
def callbacks(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    from kling_prefect.callback_relay import serve
    from kling_prefect.callbacks import parse_listen

    if args.action == "webhook-template":
        from kling_prefect.callback_webhook import WEBHOOK_TEMPLATE

        print(WEBHOOK_TEMPLATE, end="")
        return 0
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise Failure(f"--listen: {str(exc).split(': ', 1)[-1]}", code=EXIT_USAGE) from None
    if not 0 <= args.heartbeat <= 3600:
        raise Failure(f"--heartbeat: must be from 0 to 3600 seconds, got {args.heartbeat:g}", code=EXIT_USAGE)
    if not 1 <= args.max_per_second <= 100_000:
        raise Failure(
            f"--max-per-second: must be from 1 to 100000 callbacks a second, got {args.max_per_second:g}",
            code=EXIT_USAGE,
        )
    if not PREFECT_API_URL.value():
        # A relay on a temporary server would publish where no worker listens.
        raise Failure(
            "PREFECT_API_URL is not set: the relay publishes to the Prefect API the workers use", code=EXIT_USAGE
        )
    serve(host, port, heartbeat_seconds=args.heartbeat, max_per_second=args.max_per_second)
    return 0
