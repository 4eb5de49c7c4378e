"""Batch inputs: a list of prompts or objects, a JSONL file, or a CSV with a ``prompt`` column.

Every item is validated before anything is created; all problems are reported together, each with its line
and field, in one :class:`BatchInputError`.

Each item is a step of the run (its ledger entry, its cached submission, its file ``<step>.mp4``), named by
``names``: ``"position"`` (the default) by its place in the input, ``item-0001``, ``item-0002``, ...; ``"content"``
by what it asks for, ``item-<12 hex digits of the request>`` (a repeat of the same request in one input
``...-2``, ``...-3``). Name by content when several flow runs share one run key and may hold the same item (a
big batch split into overlapping slices, a schedule overlapping a manual run of a changed file): the item is
then one step whichever run and place it comes in, so it is created once and stored once. By position, the
same prompt at another place is another step (another job), and another prompt at the same place is stored
beside it as ``item-0001.<job id>.mp4``.

Examples:
    ```text
    # prompts.jsonl
    {"prompt": "A fox in the snow", "duration": 10}
    {"prompt": "A city at night", "model": "kling-2.6", "generate_audio": true}
    ```
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from kling_prefect.exceptions import BatchInputError
from kling_prefect.ledger import request_fingerprint
from kling_prefect.models import KlingRequest, request_model_for
from kling_prefect.planning import describe_validation_error
from kling_prefect.pricing import estimate_cost

MAX_ITEMS = 10_000
#: How a batch names its items (its steps): by their place in the input, or by what they ask for.
ItemNames = Literal["position", "content"]
ITEM_NAMES: tuple[ItemNames, ...] = ("position", "content")
#: Hex digits of the request's fingerprint in an item named by content.
CONTENT_DIGITS = 12


@dataclass(frozen=True)
class BatchItem:
    step: str
    request: KlingRequest
    source: str
    #: The item's place in its input, counted from 1 (the order of the run's records).
    number: int = 0


class _Namer:
    """The step names of one input's items, in order (see the module documentation)."""

    def __init__(self, names: ItemNames) -> None:
        if names not in ITEM_NAMES:
            raise BatchInputError([f"item_names: must be one of {', '.join(map(repr, ITEM_NAMES))}, got {names!r}"])
        self.names = names
        self.seen: dict[str, int] = {}

    def __call__(self, number: int, request: KlingRequest) -> str:
        if self.names == "position":
            return f"item-{number:04d}"
        digest = request_fingerprint(request)[:CONTENT_DIGITS]
        repeat = self.seen[digest] = self.seen.get(digest, 0) + 1
        return f"item-{digest}" if repeat == 1 else f"item-{digest}-{repeat}"


def _bool_fields(model: type[KlingRequest]) -> set[str]:
    return {name for name, info in model.model_fields.items() if bool in (info.annotation, *get_args(info.annotation))}


class _CellError(ValueError):
    """A CSV cell that cannot be read; the message names the column."""


EXAMPLE_LINE = '{"prompt": "A fox in the snow", "duration": 5}'


def _from_csv_row(row: dict[str, str], model: type[KlingRequest]) -> dict[str, Any]:
    # CSV cells are text: drop empty ones, read JSON for lists, true/false for booleans.
    fields: dict[str, Any] = {}
    bools = _bool_fields(model)
    for name, cell in row.items():
        if name is None or cell is None or cell.strip() == "":
            continue
        cell = cell.strip() if name != "prompt" else cell
        if name in bools and cell.lower() in ("true", "false"):
            fields[name] = cell.lower() == "true"
        elif cell.startswith(("[", "{")):
            try:
                fields[name] = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise _CellError(
                    f"column {name!r}: not valid JSON ({exc.msg} at character {exc.pos + 1}); a list cell looks "
                    'like ["https://example.com/a.png"]'
                ) from None
        else:
            fields[name] = cell
    return fields


def _read_file(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, raw item) pairs; a raw item is a dict or an exception describing why the line is bad.

    Unreadable files (missing, a directory, not UTF-8, a broken CSV) raise :class:`BatchInputError` at once.
    """
    if not path.is_file():
        raise BatchInputError([f"{path}: no such file" if not path.exists() else f"{path}: not a regular file"])
    try:
        yield from (_read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path))
    except UnicodeDecodeError as exc:
        raise BatchInputError([f"{path}: not UTF-8 text (invalid byte at offset {exc.start})"]) from None
    except csv.Error as exc:
        raise BatchInputError([f"{path}: not a readable CSV: {exc}"]) from None


def _read_csv(path: Path) -> Iterable[tuple[str, Any]]:
    # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise BatchInputError([f"{path}: a CSV needs a header row with a 'prompt' column"])
        duplicates = sorted({name for name in reader.fieldnames if reader.fieldnames.count(name) > 1})
        if duplicates:
            raise BatchInputError([f"{path}: duplicate column(s) in the header: {', '.join(duplicates)}"])
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row:
                yield where, ValueError(f"{len(row[None])} more cell(s) than header columns")
                continue
            yield where, row


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    """The lines of a JSONL file, read as they are consumed (a big batch is never all in memory)."""
    with path.open(encoding="utf-8") as handle:
        start = handle.read(4096).lstrip()
        if start.startswith("["):  # perhaps one JSON array (a common mistake): only then read it whole
            handle.seek(0)
            try:
                whole = json.loads(handle.read())
            except (json.JSONDecodeError, RecursionError):
                whole = None
            if isinstance(whole, list):
                advice = f"JSONL wants one JSON object per line, such as {EXAMPLE_LINE}"
                raise BatchInputError([f"{path}: the file is one JSON array; {advice}"])
        handle.seek(0)
        yield from _jsonl_lines(handle)


def _jsonl_lines(lines: Iterable[str]) -> Iterable[tuple[str, Any]]:
    for number, ended in enumerate(lines, start=1):
        line = ended.rstrip("\r\n")  # a column is counted on the line alone
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            # The line alone, so the column is where the line went wrong (an unfinished line: one past its end).
            yield (
                f"line {number}",
                ValueError(
                    f"invalid JSON at column {exc.colno}: {exc.msg}; each line must be one complete JSON object, "
                    f"such as {EXAMPLE_LINE}"
                ),
            )
        except RecursionError:
            yield f"line {number}", ValueError("invalid JSON: nested too deeply")


def _validated(
    *,
    prompts: list[str | dict[str, Any]] | None,
    file: str | None,
    default_model: str,
    names: ItemNames = "position",
) -> Iterator[BatchItem | str]:
    """Each item of ``prompts`` or ``file`` (exactly one of them) in order: a validated :class:`BatchItem`, or
    the problem with it (``line N: field: why``). Raises :class:`BatchInputError` for an input that cannot be
    read at all. Nothing is kept: a file is read as it is consumed (naming by content keeps a count per
    distinct request)."""
    name = _Namer(names)
    if (prompts is None) == (file is None):
        raise BatchInputError(["give either prompts or file (exactly one)"])
    if prompts is not None and not isinstance(prompts, (list, tuple)):
        raise BatchInputError([f"prompts: must be a list of prompts or objects, got {type(prompts).__name__}"])
    try:
        default = request_model_for(default_model)
    except KeyError as exc:
        raise BatchInputError([f"model: {exc.args[0]}"]) from None
    is_csv = file is not None and Path(file).suffix.lower() == ".csv"
    raw: Iterable[tuple[str, Any]] = (
        _read_file(Path(file)) if file is not None else ((f"item {i}", p) for i, p in enumerate(prompts or (), 1))
    )
    number = 0
    for where, value in raw:
        number += 1
        if number > MAX_ITEMS:
            yield f"more than {MAX_ITEMS} items; split the batch"
            return
        if isinstance(value, Exception):
            yield f"{where}: {value}"
            continue
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            kind = {"list": "a list", "str": "text", "int": "a number", "float": "a number"}.get(
                type(value).__name__, type(value).__name__
            )
            yield f"{where}: expected an object with a 'prompt', such as {EXAMPLE_LINE}; got {kind}"
            continue
        fields = dict(value)
        model_name = fields.pop("model", None)
        try:
            model = request_model_for(str(model_name)) if model_name else default
        except KeyError as exc:
            yield f"{where}: model: {exc.args[0]}"
            continue
        try:
            if is_csv:
                fields = _from_csv_row(fields, model)
            if "prompt" not in fields and "multi_prompt" not in fields:
                yield f"{where}: prompt: missing"
                continue
            request = model.model_validate(fields)
        except ValidationError as exc:
            yield f"{where}: {describe_validation_error(exc)}"
            continue
        except _CellError as exc:
            yield f"{where}: {exc}"
            continue
        yield BatchItem(step=name(number, request), request=request, source=where, number=number)


@dataclass(frozen=True)
class BatchPlan:
    """What a batch will make, from a full check of its items that kept none of them."""

    items: int
    estimated_cost: Decimal
    video_seconds: int


def check_batch(
    *, prompts: list[str | dict[str, Any]] | None = None, file: str | None = None, default_model: str
) -> BatchPlan:
    """Check every item (all problems together in one :class:`BatchInputError`) and price the batch, holding
    one item at a time: a batch of any length costs the memory of one item here."""
    count, cost, seconds = 0, Decimal(0), 0
    problems: list[str] = []
    for outcome in _validated(prompts=prompts, file=file, default_model=default_model):
        if isinstance(outcome, str):
            problems.append(outcome)
            continue
        count += 1
        cost += estimate_cost(outcome.request)
        seconds += outcome.request.video_seconds
    if problems:
        raise BatchInputError(problems)
    if not count:
        raise BatchInputError(["the batch is empty"])
    return BatchPlan(items=count, estimated_cost=cost, video_seconds=seconds)


def iter_batch_items(
    *,
    prompts: list[str | dict[str, Any]] | None = None,
    file: str | None = None,
    default_model: str,
    checked: BatchPlan | None = None,
    names: ItemNames = "position",
) -> Iterator[BatchItem]:
    """The validated items, read as they are consumed (check them first with :func:`check_batch`); raises
    :class:`BatchInputError` on the first problem. With ``checked`` (that check's plan), an item beyond the
    ones checked and priced is refused: a file that grew while the batch ran never spends past its budget.
    ``names``: how the items (steps) are named, see the module documentation."""
    validated = _validated(prompts=prompts, file=file, default_model=default_model, names=names)
    for count, outcome in enumerate(validated, 1):
        if isinstance(outcome, str):
            raise BatchInputError([outcome])
        if checked is not None and count > checked.items:
            where = file or "prompts"
            raise BatchInputError(
                [
                    f"{where}: {outcome.source} is beyond the {checked.items} items checked before the run (the "
                    "input changed while the batch ran); nothing past them was made: run the new items as a batch"
                ]
            )
        yield outcome


def load_batch_items(
    *,
    prompts: list[str | dict[str, Any]] | None = None,
    file: str | None = None,
    default_model: str,
    names: ItemNames = "position",
) -> list[BatchItem]:
    """Validated items from ``prompts`` or ``file`` (exactly one of them), all in a list; raises
    :class:`BatchInputError` listing every problem. (A big batch runs from :func:`iter_batch_items`.)"""
    check_batch(prompts=prompts, file=file, default_model=default_model)
    return list(iter_batch_items(prompts=prompts, file=file, default_model=default_model, names=names))
