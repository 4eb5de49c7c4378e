"""The package's shape: the public surface, per-model facts in one place, typed helpers, no import circles,
the credentials block's standards. Fast: no server, no emulator."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.states import State
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import ValidationError

import kling_prefect
from kling_prefect import ShortAPICredentials, estimate_cost, tasks
from kling_prefect.cli import build_parser
from kling_prefect.dispatch import Dispatching
from kling_prefect.emulator import JOB_TIME_TABLE, base_job_seconds
from kling_prefect.models import REQUEST_MODELS, KlingRequest, request_model_for
from kling_prefect.waiting import DurationModel, JobKind

PACKAGE = Path(kling_prefect.__file__).parent

# What a user imports from `kling_prefect`: the block, the clients, the request models, prices, and everything
# a task or flow returns or raises. A name added or removed here is a change of the public surface.
PUBLIC = {
    "AccountBusy",
    "AuthenticationFailed",
    "BatchInputError",
    "BudgetExceeded",
    "ClipRecord",
    "ConcurrencyLimitUnavailable",
    "CreatedJob",
    "DownloadFailed",
    "Element",
    "FinishedJob",
    "InvalidInput",
    "Job",
    "JobFailed",
    "JobMayHaveBeenCreated",
    "JobNotFound",
    "JobTimedOut",
    "Kling26TextToVideo",
    "Kling30TextToVideo",
    "KlingO1ImageToVideo",
    "KlingO1TextToVideo",
    "KlingO3TextToVideo",
    "KlingRequest",
    "ModelFacts",
    "PollPolicy",
    "RateLimited",
    "RequestRejected",
    "ResultExpired",
    "RetryPolicy",
    "RunIncomplete",
    "RunResult",
    "Shot",
    "ShortAPIClient",
    "ShortAPICredentials",
    "ShortAPIError",
    "StorageSpec",
    "StoredObject",
    "StoredVideo",
    "SubmittedJob",
    "SyncShortAPIClient",
    "TransientError",
    "UnknownJobStatus",
    "VendorUnavailable",
    "__version__",
    "estimate_cost",
    "format_usd",
    "request_model_for",
}


def test_the_public_surface_is_exactly_the_curated_names() -> None:
    assert set(kling_prefect.__all__) == PUBLIC
    assert len(kling_prefect.__all__) == len(PUBLIC)  # no duplicates
    for name in PUBLIC:
        assert getattr(kling_prefect, name) is not None, name
    # internals are not exported
    assert not {"interpret_response", "shared_http_client", "redact", "StepLedger"} & set(dir(kling_prefect))


def test_everything_a_flow_returns_or_raises_is_public() -> None:
    from kling_prefect import flows

    every_flow = (flows.text_to_video, flows.continuation, flows.storyboard, flows.batch)
    returned = {typing.get_type_hints(f.fn)["return"] for f in every_flow}
    # A flow returns its RunResult inside the final state (whose message says what it made).
    assert returned == {State[kling_prefect.RunResult] | kling_prefect.RunResult}
    for error in ("InvalidInput", "BatchInputError", "BudgetExceeded", "ConcurrencyLimitUnavailable", "RunIncomplete"):
        assert issubclass(getattr(kling_prefect, error), Exception), error
    assert kling_prefect.StoredVideo is tasks.StoredVideo and kling_prefect.SubmittedJob is tasks.SubmittedJob


def test_the_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert kling_prefect.__version__ == version("kling-prefect")
    source = (PACKAGE / "__init__.py").read_text()
    assert kling_prefect.__version__ not in source  # no second literal


# --------------------------------------------------------------------------------------------- model facts


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.short_name)
def test_each_model_carries_its_facts_and_everything_reads_them(model: type[KlingRequest]) -> None:
    facts = model.facts
    assert (model.model_id, model.short_name) == (facts.model_id, facts.short_name)
    assert request_model_for(facts.short_name) is request_model_for(facts.model_id) is model
    # pricing: the estimate of every (mode, audio) is the facts' rate times the seconds
    for (mode, audio), rate in facts.rates.items():
        fields: dict[str, Any] = {"prompt": "x", "mode": mode, **facts.audio_args(audio)}
        if model.facts.category == "image-to-video":
            fields["images"] = ["https://example.com/a.png", "https://example.com/b.png"]
        request = model.model_validate(fields)
        assert request.has_audio is audio
        assert estimate_cost(request) == rate * request.video_seconds
    # the waiting kind and its cold prior, and the emulator's job time, come from the same typical time
    request = model.model_validate(
        {"prompt": "x", **({"images": ["https://example.com/a.png"]} if facts.category == "image-to-video" else {})}
    )
    kind = JobKind.of(request)
    typical = facts.typical_job_seconds(request.mode_name, request.video_seconds, request.has_audio)
    assert DurationModel().estimate(kind).median == pytest.approx(typical)
    assert (
        base_job_seconds(facts.model_id, mode=request.mode_name, video_seconds=request.video_seconds, has_audio=False)
        == typical
    )
    assert JOB_TIME_TABLE[facts.model_id] == {m: (t.base, t.per_second) for m, t in facts.job_times.items()}


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.short_name)
def test_the_facts_durations_are_what_the_model_accepts(model: type[KlingRequest]) -> None:
    facts = model.facts
    base: dict[str, Any] = {"prompt": "x"}
    if facts.category == "image-to-video":
        base["images"] = ["https://example.com/a.png", "https://example.com/b.png"]
    for seconds in facts.durations:
        request = model.model_validate({**base, "duration": seconds})
        sent = request.to_args().get("duration", request.model_dump()["duration"])
        assert type(sent) is (int if facts.duration_on_wire == "int" else str) and int(sent) == seconds
    for outside in (min(facts.durations) - 1, max(facts.durations) + 1):
        with pytest.raises(ValidationError, match="duration"):
            model.model_validate({**base, "duration": outside})


def test_the_cli_offers_the_models_of_the_table() -> None:
    chain = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["chain"]._actions
        if "--model" in a.option_strings
    )  # type: ignore[union-attr]
    for model in REQUEST_MODELS:
        if model.facts.category == "text-to-video":
            assert model.short_name in chain.help


# --------------------------------------------------------------------------------------------- typed helpers


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.short_name)
def test_each_per_model_helper_has_the_models_fields_as_typed_parameters(model: type[KlingRequest]) -> None:
    helper = getattr(tasks, model.facts.helper)
    # one async implementation (``.aio``); the helper itself runs to its result from sync code
    assert isinstance(helper, Dispatching) and inspect.iscoroutinefunction(helper.aio)
    parameters = inspect.signature(helper).parameters
    hints = typing.get_type_hints(helper.aio, include_extras=True)
    for name, field in model.model_fields.items():
        assert name in parameters, f"{helper.__name__} lacks {name}"
        parameter = parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert hints[name] is not Any, name
        if field.is_required():
            assert parameter.default is inspect.Parameter.empty, name
        else:
            assert parameter.default == field.default, name
    assert {"run_key", "step", "options"} <= parameters.keys()
    assert parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
    assert "ClipOptions" in str(hints["options"])  # **options: Unpack[ClipOptions]: typed, not Any
    extra = parameters.keys() - model.model_fields.keys() - {"run_key", "step", "options"}
    assert not extra, extra


def test_a_helper_sends_only_what_differs_from_the_models_defaults() -> None:
    from kling_prefect.tasks.per_model import _request

    request = _request(
        request_model_for("kling-o3"), {"prompt": "x", "mode": "pro", "duration": 5, "sound": "on", "run_key": "k"}
    )
    assert request.to_args() == {"prompt": "x", "sound": "on"}  # mode and duration are the vendor's defaults


# --------------------------------------------------------------------------------------------- structure


def _imports_graph() -> dict[str, set[str]]:
    """Module -> the kling_prefect modules it imports while being imported (not under TYPE_CHECKING, not in
    functions). ``from package import name`` counts as an import of ``package.name`` when that is a module."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kling_prefect"):
                for alias in node.names:
                    member = f"{node.module}.{alias.name}"
                    targets.add(member if member in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
        graph[name] = targets - {name}
    return graph


def test_module_imports_form_no_circle() -> None:
    graph = _imports_graph()
    circles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, [*path, nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert not circles, circles
    # and in particular the four that used to import each other are layered: waiting < client < credentials
    for low, high in [
        ("kling_prefect.waiting", "kling_prefect.client"),
        ("kling_prefect.waiting", "kling_prefect.callbacks"),
        ("kling_prefect.client", "kling_prefect.credentials"),
        ("kling_prefect.callbacks", "kling_prefect.credentials"),
        ("kling_prefect.callbacks", "kling_prefect.client"),
    ]:
        for name, targets in graph.items():
            if name.startswith(low):
                assert not {t for t in targets if t.startswith(high)}, (name, targets)


# --------------------------------------------------------------------------------------------- the block


class TestShortAPICredentialsBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return ShortAPICredentials

    def test_has_a_valid_image(self, block: type[Block]) -> None:  # type: ignore[override]
        # The suite downloads the logo from the network, which these machines do not reach: the block ships
        # without a logo, and says so rather than pointing at an image nobody checked.
        assert block._logo_url is None


def test_money_is_written_one_way() -> None:
    from kling_prefect import format_usd

    assert [format_usd(Decimal(v)) for v in ("0.5", "1", "0.60", "0.950", "0.213", "1234.5")] == [
        "$0.50",
        "$1.00",
        "$0.60",
        "$0.95",
        "$0.213",
        "$1,234.50",
    ]
    assert format_usd(None) == "n/a"


def test_no_tracked_file_holds_an_unresolved_merge() -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    markers = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    found = [
        name
        for name in files
        if (root / name).is_file()
        and (root / name).suffix not in {".png", ".jpg", ".mp4"}
        and markers.search((root / name).read_text(errors="replace"))
    ]
    assert found == []
