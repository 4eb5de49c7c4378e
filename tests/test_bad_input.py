"""Bad input gets a clear answer and costs nothing: flow parameters, batch files, command-line arguments (the real
console script for one case of each command, ``main`` in-process for the rest) and a few request-model cases not
in ``test_models.py``.

Each case names the parameter, field or line at fault; the CLI exits non-zero with one line and no traceback;
and the emulator (the vendor) receives no request at all."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import ValidationError

from kling_prefect import Kling26TextToVideo, Kling30TextToVideo, KlingO1ImageToVideo, KlingO3TextToVideo
from kling_prefect.batchfile import BatchInputError, load_batch_items
from kling_prefect.exceptions import InvalidInput
from kling_prefect.flows import batch, continuation, text_to_video

from .conftest import TEST_KEY
from .helpers import CLI, shots

URL = "https://example.com/frame.png"
FAST = {"poll_interval": 0.05, "timeout_seconds": 60}


# --------------------------------------------------------------------------------------------- flow parameters

# (flow, parameters, exception type, text that names what is wrong)
FLOW_CASES: list[tuple[Callable[..., Any], dict[str, Any], type[Exception], str]] = [
    (text_to_video, {"prompt": 123}, ParameterTypeError, "prompt"),
    (text_to_video, {"prompt": ""}, ValidationError, "prompt"),
    (text_to_video, {"prompt": "  \n "}, ValidationError, "prompt"),
    (text_to_video, {"prompt": "x" * 2501}, ValidationError, "prompt"),
    (text_to_video, {"prompt": "x", "model": "kling-9"}, InvalidInput, "model"),
    (text_to_video, {"prompt": "x", "model": "kling-o1-i2v"}, InvalidInput, "model"),
    (text_to_video, {"prompt": "x", "model": 7}, ParameterTypeError, "model"),
    (text_to_video, {"prompt": "x", "duration": 2}, ValidationError, "duration"),
    (text_to_video, {"prompt": "x", "model": "kling-o1", "duration": 7}, ValidationError, "duration"),
    (text_to_video, {"prompt": "x", "duration": "ten"}, ParameterTypeError, "duration"),
    (text_to_video, {"prompt": "x", "aspect_ratio": "4:3"}, ValidationError, "aspect_ratio"),
    (text_to_video, {"prompt": "x", "mode": "fast"}, ValidationError, "mode"),
    (text_to_video, {"prompt": "x", "model": "kling-2.6", "mode": "std"}, ValidationError, "mode"),
    (text_to_video, {"prompt": "x", "options": {"sound": "loud"}}, ValidationError, "sound"),
    (text_to_video, {"prompt": "x", "options": {"promt": "typo"}}, ValidationError, "promt"),
    (text_to_video, {"prompt": "x", "options": {"prompt": "other"}}, InvalidInput, "options"),
    (text_to_video, {"prompt": "x", "duration": 5, "options": {"duration": 8}}, InvalidInput, "options"),
    (text_to_video, {"prompt": "x", "options": "sound=on"}, ParameterTypeError, "options"),
    (
        text_to_video,
        {"prompt": "x", "model": "kling-3.0", "options": {"generate_audio": "yes"}},
        ValidationError,
        "generate_audio",
    ),
    (
        text_to_video,
        {
            "prompt": "",
            "duration": 12,
            "options": {"multi_shot": True, "shot_type": "customize", "multi_prompt": shots(2, 2, 2, 2, 2, 1, 1)},
        },
        ValidationError,
        "multi_prompt",
    ),
    (
        text_to_video,
        {
            "prompt": "",
            "duration": 5,
            "options": {"multi_shot": True, "shot_type": "customize", "multi_prompt": shots(2, 2)},
        },
        ValidationError,
        "multi_prompt",
    ),
    (text_to_video, {"prompt": "x", "max_cost_usd": -1}, InvalidInput, "max_cost_usd"),
    (text_to_video, {"prompt": "x", "max_cost_usd": float("nan")}, InvalidInput, "max_cost_usd"),
    (text_to_video, {"prompt": "x", "max_cost_usd": "lots"}, ParameterTypeError, "max_cost_usd"),
    (text_to_video, {"prompt": "x", "max_cost_usd": 0.1}, Exception, "max_cost_usd"),  # BudgetExceeded
    (text_to_video, {"prompt": "x", "poll_interval": 0}, InvalidInput, "poll_interval"),
    (text_to_video, {"prompt": "x", "poll_interval": float("inf")}, InvalidInput, "poll_interval"),
    (text_to_video, {"prompt": "x", "timeout_seconds": 0}, InvalidInput, "timeout_seconds"),
    (text_to_video, {"prompt": "x", "run_key": "../../etc/passwd"}, InvalidInput, "run_key"),
    (text_to_video, {"prompt": "x", "run_key": "a b"}, InvalidInput, "run_key"),
    (text_to_video, {"prompt": "x", "run_key": "k" * 65}, InvalidInput, "run_key"),
    (text_to_video, {"prompt": "x", "output_dir": "<FILE>"}, InvalidInput, "output_dir"),
    (continuation, {"prompts": []}, InvalidInput, "prompts"),
    (continuation, {"prompts": "one long prompt"}, ParameterTypeError, "prompts"),
    (continuation, {"prompts": ["ok", ""]}, InvalidInput, "prompts[2]"),
    (continuation, {"prompts": ["ok", "fine", "   "]}, InvalidInput, "prompts[3]"),
    (continuation, {"prompts": ["ok", "next"], "continuation_duration": 7}, InvalidInput, "continuation_duration"),
    (continuation, {"prompts": ["ok", "next"], "continuation_mode": "turbo"}, InvalidInput, "continuation_mode"),
    (continuation, {"prompts": ["ok"], "model": "kling-o1-i2v"}, InvalidInput, "model"),
    (continuation, {"prompts": ["ok"], "aspect_ratio": "2:1"}, ValidationError, "aspect_ratio"),
    (batch, {"prompts": ["x"], "file": "x.jsonl"}, BatchInputError, "exactly one"),
    (batch, {}, BatchInputError, "exactly one"),
    (batch, {"prompts": []}, BatchInputError, "empty"),
    (batch, {"prompts": ["x"], "max_concurrency": 0}, InvalidInput, "max_concurrency"),
    (batch, {"prompts": ["x"], "max_concurrency": 10**6}, InvalidInput, "max_concurrency"),
    (batch, {"prompts": ["x"], "item_names": "by-name"}, ParameterTypeError, "item_names"),
    (batch, {"prompts": ["x"], "model": "kling-9"}, BatchInputError, "model"),
    (batch, {"prompts": [{"prompt": "x", "duration": 99}]}, BatchInputError, "item 1: duration"),
    (batch, {"prompts": ["ok", {"duration": 5}]}, BatchInputError, "item 2: prompt: missing"),
    (batch, {"prompts": [{"prompt": "x", "model": "kling-9"}]}, BatchInputError, "item 1: model"),
    (batch, {"prompts": [{"prompt": "x", "images": [URL]}]}, BatchInputError, "item 1: images"),
]


@pytest.mark.parametrize(("flow", "params", "error", "needle"), FLOW_CASES, ids=lambda v: getattr(v, "name", None))
async def test_invalid_flow_parameters_fail_before_any_request(
    prefect_server, vendor_env, tmp_path, flow, params, error, needle
) -> None:
    if params.get("output_dir") == "<FILE>":
        (tmp_path / "a-file").write_text("not a directory")
        params = {**params, "output_dir": str(tmp_path / "a-file")}
    params = {"output_dir": str(tmp_path / "out"), **FAST, **params}
    with pytest.raises(error) as caught:
        await flow(**params)
    assert needle in str(caught.value), str(caught.value)
    assert "Traceback" not in str(caught.value)
    assert vendor_env.stats().requests == 0
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- batch files

EIGHT = json.dumps({"prompt": "x", "model": "kling-o1-i2v", "action": "refer", "images": [URL] * 8})

# (file name, content, text naming what is wrong)
FILE_CASES: list[tuple[str, str | bytes, str]] = [
    ("a.jsonl", '{"prompt": "ok"}\n{"prompt": "x",\n', "line 2: invalid JSON"),
    ("a.jsonl", '{"duration": 5}\n', "line 1: prompt: missing"),
    ("a.jsonl", '{"prompt": 5}\n', "line 1: prompt"),
    ("a.jsonl", '{"prompt": null}\n', "line 1: prompt"),
    ("a.jsonl", '{"prompt": ""}\n', "line 1: prompt"),
    ("a.jsonl", '{"prompt": "x", "duration": "five"}\n', "line 1: duration"),
    ("a.jsonl", '{"prompt": "x", "duration": 16}\n', "line 1: duration"),
    ("a.jsonl", '{"prompt": "x", "model": "kling-9"}\n', "line 1: model"),
    ("a.jsonl", EIGHT + "\n", "line 1: images"),
    ("a.jsonl", '["prompt", "x"]\n', "one JSON array; JSONL wants one JSON object per line"),
    ("a.jsonl", '[\n{"prompt": "x"},\n{"prompt": "y"}\n]\n', "one JSON array"),
    ("a.jsonl", '{"prompt": "x",\n', "line 1: invalid JSON at column 16"),  # one past the end of the line
    ("a.jsonl", "5\n", "line 1: expected an object"),
    ("a.jsonl", '{"prompt": "x", "colour": "red"}\n', "line 1: colour"),
    ("a.jsonl", '{"prompt": "x", "aspect_ratio": "4:3"}\n', "line 1: aspect_ratio"),
    ("a.jsonl", '{"prompt": "x", "model": "kling-o1-i2v", "images": ["file:///etc/passwd"]}\n', "line 1: images"),
    ("a.jsonl", json.dumps({"prompt": "x" * 2501}) + "\n", "line 1: prompt"),
    ("a.jsonl", '{"prompt": "x", "model": "kling-2.6", "cfg_scale": NaN}\n', "line 1: cfg_scale"),
    ("a.jsonl", "[" * 100_000 + "\n", "nested too deeply"),
    ("a.jsonl", b'\xff\xfe{"prompt": "x"}\n', "not UTF-8"),
    ("a.jsonl", "# only a comment\n\n", "empty"),
    ("a.csv", "text,duration\nx,5\n", "'prompt' column"),
    ("a.csv", "prompt,duration\nx,5,extra\n", "line 2: 1 more cell(s) than header"),
    ("a.csv", "prompt,duration\nx,99\n", "line 2: duration"),
    ("a.csv", "prompt,colour\nx,red\n", "line 2: colour"),
    ("a.csv", "prompt,images,model\nx,[not json,kling-o1-i2v\n", "line 2: column 'images': not valid JSON"),
    ("a.csv", "prompt,prompt\nx,y\n", "duplicate column"),
    ("a.csv", "prompt,duration\n,5\n", "line 2: prompt: missing"),
    ("a.csv", "prompt,generate_audio,model\nx,maybe,kling-2.6\n", "line 2: generate_audio"),
    ("a.csv", "prompt\n" + "x" * 200_000 + "\n", "not a readable CSV"),
]


@pytest.mark.parametrize(("name", "content", "needle"), FILE_CASES, ids=[f"{c[0]}-{c[2]}" for c in FILE_CASES])
def test_invalid_batch_files_are_reported_by_line_and_field(tmp_path, name, content, needle) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BatchInputError) as caught:
        load_batch_items(file=str(path), default_model="kling-o3")
    assert needle in str(caught.value), str(caught.value)


def test_batch_file_problems_are_all_reported_together_and_unreadable_paths_are_named(tmp_path) -> None:
    path = tmp_path / "three.jsonl"
    path.write_text('{"prompt": ""}\n{"prompt": "ok"}\n{"duration": 5}\nnot json\n')
    with pytest.raises(BatchInputError) as caught:
        load_batch_items(file=str(path), default_model="kling-o3")
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 1", "line 3", "line 4"]
    with pytest.raises(BatchInputError, match="no such file"):
        load_batch_items(file=str(tmp_path / "missing.jsonl"), default_model="kling-o3")
    with pytest.raises(BatchInputError, match="not a regular file"):
        load_batch_items(file=str(tmp_path), default_model="kling-o3")
    # A spreadsheet's byte-order mark is not an error.
    (tmp_path / "bom.csv").write_text("\ufeffprompt,duration\nA fox,5\n", encoding="utf-8")
    assert load_batch_items(file=str(tmp_path / "bom.csv"), default_model="kling-o3")[0].request.duration == 5


def test_a_batch_is_checked_and_priced_whole_then_read_as_it_is_consumed(tmp_path) -> None:
    from decimal import Decimal

    from kling_prefect.batchfile import check_batch, iter_batch_items

    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"prompt": "scene {i}", "duration": 5, "mode": "std"}}\n' for i in range(1, 301)))
    plan = check_batch(file=str(path), default_model="kling-o3")
    assert (plan.items, plan.estimated_cost, plan.video_seconds) == (300, Decimal("0.071") * 5 * 300, 1500)
    items = iter_batch_items(file=str(path), default_model="kling-o3")
    first = next(items)
    assert (first.step, first.request.prompt) == ("item-0001", "scene 1")
    # read as consumed: a line far down the file (past any read-ahead) changed after the first item was taken
    # is what that item is
    with path.open("r+") as handle:
        text = handle.read().replace('"scene 290"', '"scene XC"')
        handle.seek(0)
        handle.write(text)
    assert [i.request.prompt for i in items][288:290] == ["scene XC", "scene 291"]
    assert [i.step for i in load_batch_items(file=str(path), default_model="kling-o3")][-1] == "item-0300"
    with pytest.raises(BatchInputError) as caught:
        check_batch(prompts=["ok", "", "fine", {"duration": 5}], default_model="kling-o3")
    assert [p.split(":")[0] for p in caught.value.problems] == ["item 2", "item 4"]


def test_batch_items_named_by_content_are_one_step_whatever_their_slice_and_place() -> None:
    """Flow runs sharing a run key hold the same item at different places: named by content it is one step (one
    create, one stored clip); a repeat in one input is a second take; by position (the default) only the place
    counts."""
    a = [{"prompt": "a fox", "duration": 5}, "a heron", "a fox"]
    b = ["a heron", "an owl", {"duration": 5, "prompt": "a fox"}]
    first, second = (load_batch_items(prompts=p, default_model="kling-o3", names="content") for p in (a, b))
    fox, heron, plain_fox = (item.step for item in first)  # "a fox" alone asks for another duration
    assert fox.startswith("item-") and len(fox) == len("item-") + 12 and plain_fox != fox
    assert [item.step for item in second] == [heron, second[1].step, fox]  # same requests, same steps
    assert len({fox, heron, plain_fox, second[1].step}) == 4
    assert [item.number for item in second] == [1, 2, 3]
    again = load_batch_items(prompts=["a fox", "a fox", "a fox"], default_model="kling-o3", names="content")
    assert [item.step for item in again] == [plain_fox, f"{plain_fox}-2", f"{plain_fox}-3"]  # three takes
    other_model = load_batch_items(prompts=["a heron"], default_model="kling-2.6", names="content")
    assert other_model[0].step != heron  # what is asked for includes the model
    by_place = load_batch_items(prompts=b, default_model="kling-o3")
    assert [item.step for item in by_place] == ["item-0001", "item-0002", "item-0003"]
    with pytest.raises(BatchInputError, match="item_names"):
        load_batch_items(prompts=a, default_model="kling-o3", names="by-name")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- request models

MODEL_CASES: list[tuple[type, dict[str, Any], str]] = [
    (KlingO3TextToVideo, {"prompt": None}, "prompt"),
    (KlingO3TextToVideo, {"prompt": "x", "duration": 5.5}, "duration"),
    (Kling30TextToVideo, {"prompt": "x", "negative_prompt": 123}, "negative_prompt"),
    (Kling26TextToVideo, {"prompt": "x", "aspect_ratio": None}, "aspect_ratio"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": URL}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": ["javascript:alert(1)"]}, "images.0"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": ["http://"]}, "images.0"),
    (
        KlingO1ImageToVideo,
        {"prompt": "x", "action": "refer", "images": [URL], "elements": [{"frontal_image_url": "ftp://x/y.png"}]},
        "elements.0.frontal_image_url",
    ),
]


@pytest.mark.parametrize(("model", "kwargs", "field"), MODEL_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_invalid_requests_not_covered_by_the_model_table(model, kwargs, field) -> None:
    with pytest.raises(ValidationError) as caught:
        model(**kwargs)
    assert field in {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}, caught.value


# --------------------------------------------------------------------------------------------- command line

GOOD = '{"prompt": "fine"}\n'
BAD = '{"prompt": "fine"}\n{"prompt": "x", "duration": 99}\n'

# (arguments, extra environment, text naming what is wrong)
CLI_CASES: list[tuple[tuple[str, ...], dict[str, str], str]] = [
    (("chain",), {}, "PROMPT"),
    (("chain", ""), {}, "PROMPT 1"),
    (("chain", "x", "--duration", "2"), {}, "--duration"),
    (("chain", "x", "--duration", "99"), {}, "--duration"),
    (("chain", "x", "--aspect-ratio", "4:3"), {}, "--aspect-ratio"),
    (("chain", "x", "--model", "kling-9"), {}, "kling-9"),
    (("chain", "x", "--model", "kling-o1-i2v"), {}, "--model"),
    (("chain", "x", "--model", "kling-2.6", "--mode", "std"), {}, "--mode"),
    (("chain", "x", "--model", "kling-o1", "--audio"), {}, "--audio"),
    (("chain", "--multi-prompt", '[{"prompt": "a"'), {}, "--multi-prompt"),
    (("chain", "--multi-prompt", '[{"prompt": "a", "duration": 5}]', "--model", "kling-2.6"), {}, "--multi-prompt"),
    (("chain", "--multi-prompt", '[{"prompt": "a", "duration": 2}]', "--duration", "5"), {}, "--multi-prompt"),
    (("chain", "--multi-prompt", "@<DIR>/missing.json"), {}, "--multi-prompt"),
    (("chain",), {}, "PROMPT"),
    (("chain", "x", "--out", "<DIR>/good.jsonl"), {}, "--out"),
    (("chain", "x", "--max-cost", "-1"), {}, "--max-cost"),
    (("chain", "a", "b", "c", "--max-cost", "0.5"), {}, "exceeds --max-cost $0.50"),
    (("chain", "x", "y", "--continuation-duration", "7"), {}, "--continuation-duration"),
    (("chain", "x", "--poll-interval", "0"), {}, "--poll-interval"),
    (("chain", "x", "--run-key", "../../etc"), {}, "--run-key"),
    (("chain", "x", "", "--model", "kling-o1"), {}, "PROMPT 2"),
    (("chain", "x" * 2501), {}, "PROMPT 1: must be at most 2,500 characters, got 2,501"),
    (("chain", "x"), {"SHORTAPI_KEY": ""}, "SHORTAPI_KEY"),
    (("chain", "x"), {"SHORTAPI_READ_TIMEOUT": "soon"}, "SHORTAPI_READ_TIMEOUT"),
    (("chain", "x"), {"SHORTAPI_BASE_URL": "ftp://vendor"}, "SHORTAPI_BASE_URL"),
    (("batch", "<DIR>/missing.jsonl"), {}, "no such file"),
    (("batch", "<DIR>/bad.jsonl"), {}, "line 2: duration"),
    (("batch", "<DIR>/good.jsonl", "--max-concurrency", "0"), {}, "--max-concurrency"),
    (("batch", "<DIR>/good.jsonl", "--max-concurrency", "1001"), {}, "from 1 to 1000"),
    (("batch", "<DIR>/array.jsonl"), {}, "one JSON array"),
    (("batch", "<DIR>/good.jsonl", "--max-cost", "0.01"), {}, "--max-cost"),
    (("estimate", "x", "--model", "kling-o1-i2v", "--duration", "12"), {}, "--duration"),
    (("estimate", "x", "--model", "kling-o1-i2v", "--audio"), {}, "--audio"),
    (("emulator", "--port", "70000"), {}, "--port"),
    (("setup", "--jobs-limit", "0"), {}, "--jobs-limit"),
    (("setup", "--max-queries-per-second", "0"), {}, "--max-queries-per-second"),
    (("setup", "--max-queries-per-second", "-5"), {}, "greater than 0"),
    (("setup", "--max-queries-per-second", "fast"), {}, "number of queries per second"),
    (("estimate", "x", "--file", "<DIR>/good.jsonl"), {}, "not both"),
    (("render",), {}, "invalid choice"),
]


#: Cases run as the real console script (a subprocess each, in parallel): one of each command, so the installed
#: entry point and a fresh interpreter's output are checked too; the others call the same ``main`` in-process
#: (each subprocess costs seconds of importing Prefect, the in-process call milliseconds).
SUBPROCESS_CASES = {index for command in ("chain", "batch", "estimate") for index in (
    next(i for i, case in enumerate(CLI_CASES) if case[0][0] == command),
)}  # fmt: skip


def run_in_process(argv: list[str], env: dict[str, str], cwd: Any) -> subprocess.CompletedProcess[str]:
    """``kling-prefect ARGV`` through :func:`kling_prefect.cli.main`, its output captured, its environment set."""
    import contextlib
    import io

    from kling_prefect.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(cwd)
        try:
            code: int | None = main(argv)
        except SystemExit as exit_:  # argparse's own errors (usage, invalid choice)
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cli_outcomes(emulator_server, tmp_path_factory) -> dict[Any, Any]:
    """Every CLI case run as a user runs it, then the vendor's request count."""
    folder = tmp_path_factory.mktemp("cli-input")
    (folder / "good.jsonl").write_text(GOOD)
    (folder / "bad.jsonl").write_text(BAD)
    (folder / "array.jsonl").write_text('[{"prompt": "a"}, {"prompt": "b"}]\n')
    emulator_server.clear_faults()
    emulator_server.reset_stats()
    vendor = {"SHORTAPI_KEY": TEST_KEY, "SHORTAPI_BASE_URL": emulator_server.base_url}

    def argv(index: int) -> list[str]:
        return [a.replace("<DIR>", str(folder)) for a in CLI_CASES[index][0]]

    def run(index: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **vendor, **CLI_CASES[index][1]}
        return subprocess.run([CLI, *argv(index)], capture_output=True, text=True, timeout=120, env=env, cwd=folder)

    with ThreadPoolExecutor(max_workers=len(SUBPROCESS_CASES)) as pool:
        outcomes: dict[Any, Any] = dict(zip(SUBPROCESS_CASES, pool.map(run, SUBPROCESS_CASES), strict=True))
    for index in range(len(CLI_CASES)):
        if index not in SUBPROCESS_CASES:
            outcomes[index] = run_in_process(argv(index), {**vendor, **CLI_CASES[index][1]}, folder)
    outcomes["requests"] = emulator_server.stats().requests
    return outcomes


@pytest.mark.slow  # three subprocesses of seconds each: outside the fast selection
@pytest.mark.parametrize("index", range(len(CLI_CASES)), ids=[" ".join(c[0])[:40] for c in CLI_CASES])
def test_invalid_cli_arguments_exit_nonzero_with_one_line(cli_outcomes, index) -> None:
    args, _, needle = CLI_CASES[index]
    done = cli_outcomes[index]
    lines = done.stderr.strip().splitlines()
    assert done.returncode not in (0, None), (args, done.stdout, done.stderr)
    assert len(lines) == 1 and needle in lines[0], (args, done.stderr)
    assert lines[0].startswith("kling-prefect") and "Traceback" not in done.stderr
    assert len(re.findall(r"\bgot\b", lines[0])) <= 1, lines[0]  # the value is shown once
    assert done.stdout == ""


@pytest.mark.slow
def test_no_bad_input_reached_the_vendor(cli_outcomes) -> None:
    assert cli_outcomes["requests"] == 0


def test_the_tables_are_large_and_spread() -> None:
    flows = {case[0].name for case in FLOW_CASES}
    assert flows == {"kling-text-to-video", "kling-continuation", "kling-batch"}
    assert len(FLOW_CASES) + len(FILE_CASES) + len(MODEL_CASES) + len(CLI_CASES) >= 100
