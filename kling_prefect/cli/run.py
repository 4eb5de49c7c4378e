"""Running a planned set of clips as a flow: the path every clip-making command shares.

:func:`run_plan` takes the command's :class:`~kling_prefect.cli.plans.Plan` and a function that calls its flow,
and does, in order:

1. the checks that need no Prefect: ``--out``, the budget (``--max-cost``), the ShortAPI key and URL;
2. Prefect: the configured API, or its temporary server started with the time it needs
   (:mod:`kling_prefect.cli.server`); then the named blocks and ``--jobs-limit`` are looked up;
3. the flow, with one progress row per planned clip and Prefect's logs kept off the terminal
   (:mod:`kling_prefect.cli.terminal`) unless ``-v``;
4. the result on stdout (text, or JSON with ``--json``) and the summary line, or one line naming the failure
   and its fix (:mod:`kling_prefect.cli.errors`); before the summary line, when the vendor account refused
   creates for its concurrency, one line saying how many jobs it accepted at once and how to avoid that.

Examples:
    ```python
    from kling_prefect import flows
    from kling_prefect.cli.run import run_plan

    run_plan(args, plan, lambda run: flows.continuation(**plan.flow_parameters, **run))
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kling_prefect.cli.errors import EXIT_FAILED, Context, Failure, debug_enabled, explain
from kling_prefect.cli.plans import Plan, flag_namer
from kling_prefect.cli.progress import Tracker, make_display, summary_line
from kling_prefect.cli.server import PrefectApi, prefect_api
from kling_prefect.cli.terminal import terminal_logs
from kling_prefect.runs import RunIncomplete

__all__ = ["FlowCall", "default_run_key", "print_result", "run_plan"]

#: Calls the command's flow with the shared run parameters (``run_key``, ``output_dir``, ...) and
#: ``return_state=True``; returns the flow's final state.
FlowCall = Callable[[dict[str, Any]], Awaitable[Any]]


def default_run_key(command: str) -> str:
    """``chain-20250102-153012-3fa9``: readable, sortable, and unique enough that two runs never share jobs."""
    return f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_before_prefect(args: argparse.Namespace, plan: Plan, context: Context) -> None:
    """Everything that can be checked before Prefect starts: output folder, budget, ShortAPI settings."""
    from kling_prefect.credentials import ShortAPICredentials
    from kling_prefect.planning import check_budget, check_output_dir

    check_output_dir(args.out or "kling-output", name="--out")
    check_budget(plan.requests, args.max_cost, name="--max-cost")
    if getattr(args, "max_queries_per_second", None) is not None:
        # A process setting, read by every client the run's tasks open (the flow runs in this process).
        os.environ["SHORTAPI_MAX_QUERIES_PER_SECOND"] = repr(args.max_queries_per_second)
    if args.credentials_block:
        return
    if not os.environ.get("SHORTAPI_KEY", "").strip():
        raise Failure(
            "no ShortAPI key",
            "set SHORTAPI_KEY (and SHORTAPI_BASE_URL for a proxy or the emulator), or pass --credentials-block NAME",
            code=2,
        )
    try:
        context.api_url = ShortAPICredentials.from_env().base_url
    except ValueError as exc:
        raise Failure(str(exc), code=2) from None


async def check_with_prefect(args: argparse.Namespace, context: Context, api: PrefectApi) -> None:
    """The named blocks and limit exist on the Prefect server (else: how to create them), before any flow run."""
    from kling_prefect.credentials import ShortAPICredentials

    where = "the temporary server's database in PREFECT_HOME" if api.temporary else f"the Prefect API at {api.api_url}"
    if args.credentials_block:
        try:
            block = await ShortAPICredentials.aload(args.credentials_block)
        except ValueError:
            name = args.credentials_block
            raise Failure(
                f"--credentials-block: no ShortAPICredentials block named {name!r} in {where}",
                "save one: python -c 'from kling_prefect import ShortAPICredentials; "
                f'ShortAPICredentials(api_key="...").save("{name}")\' (or drop the flag to use SHORTAPI_KEY)',
                code=2,
            ) from None
        context.api_url = str(getattr(block, "base_url", "")) or None
    if args.s3_bucket_block:
        try:
            from prefect_aws.s3 import S3Bucket

            await S3Bucket.aload(args.s3_bucket_block)
        except ValueError:
            raise Failure(
                f"--s3-bucket-block: no S3Bucket block named {args.s3_bucket_block!r} in {where}",
                f"save one with prefect-aws: S3Bucket(bucket_name=..., credentials=AwsCredentials(...))"
                f".save({args.s3_bucket_block!r}) (or drop the flag to store under --out)",
                code=2,
            ) from None
    if args.jobs_limit:
        from kling_prefect.concurrency import require_limit

        await require_limit(args.jobs_limit)


def run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters every run command shares (see :func:`~kling_prefect.cli.registry.add_run_options`)."""
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


def run_plan(
    args: argparse.Namespace,
    plan: Plan,
    call: FlowCall,
    *,
    context: Context | None = None,
    fails_when: Callable[[Any], bool] = lambda result: bool(result.failed),
) -> int:
    """Run ``plan`` through ``call`` with progress, and print the result; raise :class:`Failure` otherwise.

    Returns 0, or 1 when ``fails_when(result)`` (some clips failed, the others stored).
    """
    from kling_prefect import progress
    from kling_prefect.waiting import default_duration_model

    context = context or Context(rename=flag_namer())
    args.run_key = args.run_key or default_run_key(args.command)
    context.run_key = args.run_key
    context.credentials_block = args.credentials_block
    try:
        check_before_prefect(args, plan, context)
    except Exception as exc:
        if debug_enabled():
            raise
        raise explain(exc, context) from None

    tracker = Tracker(plan, durations=default_duration_model())
    display = make_display(tracker, enabled=not args.no_progress)
    result: Any = None
    flow_run_id: Any = None
    api: PrefectApi | None = None
    with terminal_logs(verbose=args.verbose, console=display.console):
        display.start()
        try:
            with prefect_api(verbose=args.verbose, status=display.say) as api, progress.subscribe(tracker):
                display.say("")
                asyncio.run(check_with_prefect(args, context, api))
                state = asyncio.run(_awaited(call(run_parameters(args))))
                flow_run_id = state.state_details.flow_run_id
                try:
                    result = asyncio.run(state.aresult())
                except RunIncomplete as incomplete:  # the run ended Failed, as the UI shows: report its clips
                    result = incomplete.result
        except (Exception, KeyboardInterrupt) as exc:
            failure = explain(exc, Context(**{**vars(context), "step": tracker.active}))
            if isinstance(exc, KeyboardInterrupt) and not any(row.started for row in tracker.snapshot()):
                failure = Failure("interrupted before any job was created", code=failure.code)
            tracker.end_unfinished(_short_reason(failure))
            display.stop()
            if any(row.started for row in tracker.snapshot()):  # jobs ran: say what became of them
                for note in account_notes():
                    display.summary(note)
                display.summary(tracker.summary())
            if debug_enabled():
                raise
            raise failure from exc
        tracker.apply(result)
        display.stop()
        for note in account_notes():
            display.summary(note)
        display.summary(tracker.summary(result))
    print_result(result, args=args, api=api, flow_run_id=flow_run_id)
    if fails_when(result):
        raise Failure(
            f"{result.describe()} (run key {args.run_key})",
            f"re-run with --run-key {args.run_key} to make the missing clips; the stored ones are kept",
            code=EXIT_FAILED,
        )
    return 0


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def account_notes() -> list[str]:
    """What this process learned of the vendor account's concurrency from its refusals, one line an account
    (none when nothing was refused); the flow runs in this process, so its limiter is the run's."""
    from kling_prefect.concurrency import account_reports

    return [report.describe() for report in account_reports()]


def _short_reason(failure: Failure) -> str:
    return failure.what.split(": ", 1)[-1] if ": " in failure.what else failure.what


def print_result(result: Any, *, args: argparse.Namespace, api: PrefectApi | None, flow_run_id: Any) -> None:
    """The result on stdout: JSON with ``--json``; else where each clip and the final video are, the summary
    line when no progress display printed it, and where the run is in Prefect."""
    from kling_prefect.concurrency import account_reports

    data = result.as_dict()
    if flow_run_id is not None:
        data["flow_run_id"] = str(flow_run_id)
    reports = account_reports()
    if reports:
        data["account_limits"] = [report.as_dict() for report in reports]
    if args.json:
        print(json.dumps(data, indent=2))
        return
    for record in result.records:
        where = record.local_path or record.uri if record.stored else f"failed: {record.reason or record.error}"
        print(f"{record.step}  {where}")
    if result.final is not None and len(result.records) > 1:
        print(f"final video: {result.final.local_path or result.final.uri}")
    if args.no_progress:
        for report in reports:
            print(report.describe())
        print(summary_line(result.totals))
    print(_where_in_prefect(api, flow_run_id, result))


def _where_in_prefect(api: PrefectApi | None, flow_run_id: Any, result: Any) -> str:
    artifact = f", artifact {result.summary_artifact}" if result.summary_artifact else ""
    if api is not None and not api.temporary and flow_run_id is not None:
        from prefect.utilities.urls import url_for

        url = url_for("flow-run", obj_id=flow_run_id)
        if url:
            return f"in Prefect: {url}{artifact}"
    home = os.environ.get("PREFECT_HOME", "").strip()
    browse = f"PREFECT_HOME={home} prefect server start" if home else "prefect server start"
    return f"in Prefect: flow run {flow_run_id}{artifact} (to browse it: {browse})"
