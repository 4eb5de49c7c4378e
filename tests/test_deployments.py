"""Deployments and scale-out.

Fast (no server): deployments/prefect.yaml loads, its entrypoints and default parameters fit the flows (and
their budgets), its schedules parse with Prefect's models, and deployments/serve.py builds the same thing.

Real server (slow): a `prefect server start` subprocess; `prefect deploy --all` registers the yaml; the server
holds the schedules; a process worker runs the continuation deployment against the emulator; two workers
share one global limit of 2 jobs in flight (created by the `kling-prefect setup` CLI).

In-process (the session's Prefect server): a missing limit fails before any create; a create rate limit
spaces creates; the tasks run under Prefect's thread- and process-pool task runners, prefect-dask's DaskTaskRunner
(a test dependency) and prefect-ray's RayTaskRunner where installed; every task input, output and error pickles.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pickle
import subprocess
import typing
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.types._datetime import parse_datetime

from kling_prefect import exceptions, media
from kling_prefect.artifacts import ClipRecord
from kling_prefect.batchfile import load_batch_items
from kling_prefect.concurrency import DEFAULT_JOBS_LIMIT, ConcurrencyLimitUnavailable, setup_limits
from kling_prefect.emulator import Emulator
from kling_prefect.flows import RunResult, batch, build_request, check_budget, plan_chain, text_to_video
from kling_prefect.models import REQUEST_MODELS, KlingO1ImageToVideo, KlingO3TextToVideo
from kling_prefect.planning import PlannedImage, plan_storyboard
from kling_prefect.storage import StorageSpec, StoredObject
from kling_prefect.tasks import (
    FinishedJob,
    StoredVideo,
    SubmittedJob,
    store_kling_video,
    submit_kling_job,
    wait_for_kling_job,
)
from tests.deploy_helpers import (
    KLING_PREFECT,
    PREFECT,
    PREFECT_YAML,
    REPO,
    PrefectServer,
    deployments_by_name,
    free_port,
    load_prefect_yaml,
    run_command,
    start_worker,
    tail,
    wait_worker,
)

TEST_KEY = "sk-test-deployments"
EXAMPLE_ENTRYPOINTS = {
    "flows/text_to_video.py:text_to_video",
    "flows/continuation.py:continuation",
    "flows/batch.py:batch",
    "flows/storyboard.py:storyboard",
}


# ============================================================================================ fast: the yaml


def yaml_schedule(config: dict[str, Any]) -> CronSchedule | IntervalSchedule:
    """A prefect.yaml schedule entry as Prefect's schedule model (validates cron, interval and timezone)."""
    if "cron" in config:
        return CronSchedule(cron=config["cron"], timezone=config.get("timezone"), day_or=config.get("day_or", True))
    if "interval" in config:
        fields: dict[str, Any] = {"interval": timedelta(seconds=config["interval"])}
        if config.get("anchor_date"):
            fields["anchor_date"] = parse_datetime(config["anchor_date"])
        if config.get("timezone"):
            fields["timezone"] = config["timezone"]
        return IntervalSchedule(**fields)
    raise AssertionError(f"unsupported schedule entry {config}")


def yaml_concurrency(deployment: dict[str, Any]) -> tuple[int | None, str | None]:
    limit = deployment.get("concurrency_limit")
    if isinstance(limit, dict):
        return limit.get("limit"), limit.get("collision_strategy")
    return limit, None


def plan_requests(flow_name: str, params: dict[str, Any]) -> list[Any]:
    """The validated requests a run of ``flow_name`` with ``params`` would submit (no API call)."""
    if flow_name == "kling-text-to-video":
        return [
            build_request(
                params["model"],
                params["prompt"],
                duration=params["duration"],
                aspect_ratio=params["aspect_ratio"],
                mode=params["mode"],
                options=params["options"],
            )
        ]
    if flow_name == "kling-continuation":
        return plan_chain(
            params["model"],
            params["prompts"],
            duration=params["duration"],
            aspect_ratio=params["aspect_ratio"],
            mode=params["mode"],
            continuation_duration=params["continuation_duration"],
            continuation_mode=params["continuation_mode"],
            options=params["options"],
        )
    if flow_name == "kling-batch":
        items = load_batch_items(prompts=params["prompts"], file=params["file"], default_model=params["model"])
        return [item.request for item in items]
    if flow_name == "kling-storyboard":  # the keyframes must exist where the run starts: the repository root
        plan = plan_storyboard(
            params["keyframes"],
            params["prompts"],
            duration=params["duration"],
            mode=params["mode"],
            cast=params["cast"],
        )
        return list(plan.requests)
    raise AssertionError(f"no planner for flow {flow_name}")


@pytest.fixture
def in_repo(monkeypatch):
    """Entrypoints are relative to the repository root, as for `prefect deploy` and the workers."""
    monkeypatch.chdir(REPO)


def test_prefect_yaml_has_a_deployment_per_example_flow() -> None:
    config = load_prefect_yaml()
    names = [d["name"] for d in config["deployments"]]
    assert len(names) == len(set(names)), f"duplicate deployment names: {names}"
    assert {d["entrypoint"] for d in config["deployments"]} == EXAMPLE_ENTRYPOINTS
    try:  # the model `prefect deploy` itself reads the file with (private: skip that part if it moved)
        from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig
    except ImportError:  # pragma: no cover - depends on the Prefect version
        return
    PrefectYamlModel.model_validate(config)
    for deployment in config["deployments"]:
        for schedule in deployment.get("schedules") or []:
            RawScheduleConfig.model_validate(schedule)  # extra="forbid": a misspelt key fails here


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
def test_entrypoint_loads_and_default_parameters_fit_the_flow(name: str, in_repo) -> None:
    deployment = deployments_by_name()[name]
    loaded = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters") or {}
    signature = inspect.signature(loaded.fn)
    unknown = set(params) - set(signature.parameters)
    assert not unknown, f"{name}: parameters not in {loaded.name}'s signature: {sorted(unknown)}"
    required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
    assert required <= set(params), f"{name}: a scheduled run would lack {sorted(required - set(params))}"
    loaded.validate_parameters(params)  # types, as the server's schema would check them

    # The scheduled run must not fail at its first step: requests valid, estimate within the budget.
    merged = {p: v.default for p, v in signature.parameters.items() if v.default is not inspect.Parameter.empty}
    merged.update(params)
    requests = plan_requests(loaded.name, merged)
    assert requests, f"{name}: a run would create nothing"
    assert merged["max_cost_usd"] is not None, f"{name}: a scheduled run without a budget"
    check_budget(requests, merged["max_cost_usd"])
    assert merged["jobs_limit"] == DEFAULT_JOBS_LIMIT, f"{name}: runs must hold a slot of the shared jobs limit"


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
def test_schedules_work_pool_and_tags(name: str) -> None:
    from prefect.workers.process import ProcessWorker

    deployment = deployments_by_name()[name]
    schedules = deployment.get("schedules") or []
    assert schedules, f"{name}: no schedule"
    for config in schedules:
        schedule = yaml_schedule(config)
        assert schedule.timezone, f"{name}: schedule without a timezone: {config}"
        assert config.get("active", True) is True
    kinds = {type(yaml_schedule(s)) for s in schedules}
    if deployment["entrypoint"].endswith(":batch"):
        assert kinds == {IntervalSchedule}, "the batch runs on an interval"
    else:
        assert kinds == {CronSchedule}, "the daily content runs on a cron"

    pool = deployment["work_pool"]
    assert pool["name"] == "kling-process"
    template = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    assert set(pool.get("job_variables") or {}) <= set(template), "job variables unknown to a process worker"
    assert "kling" in deployment["tags"] and len(deployment["tags"]) >= 2
    limit, strategy = yaml_concurrency(deployment)
    if ":batch" not in deployment["entrypoint"]:
        assert limit == 1, f"{name}: a daily run must not overlap the previous one"
    assert strategy in (None, "ENQUEUE", "CANCEL_NEW")


def test_readme_creates_the_pool_the_yaml_uses_as_a_process_pool() -> None:
    readme = (REPO / "deployments" / "README.md").read_text()
    pools = {d["work_pool"]["name"] for d in load_prefect_yaml()["deployments"]}
    for pool in pools:
        assert f"prefect work-pool create {pool} --type process" in readme
    assert "prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml" in readme
    assert "kling-prefect setup" in readme


def test_pull_step_changes_into_the_directory_deploy_ran_in() -> None:
    config = load_prefect_yaml()
    (build,) = config["build"]
    shell = build["prefect.deployments.steps.run_shell_script"]
    assert shell["script"].strip() == "pwd"
    (pull,) = config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == f"{{{{ {shell['id']}.stdout }}}}"


def load_serve_module() -> Any:
    spec = importlib.util.spec_from_file_location("kling_deployments_serve", REPO / "deployments" / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_builds_the_same_deployments_as_the_yaml(in_repo) -> None:
    served = {d.name: d for d in load_serve_module().build_deployments()}
    declared = deployments_by_name()
    assert set(served) == set(declared)
    for name, yaml_deployment in declared.items():
        runner = served[name]
        assert runner.flow_name == load_flow_from_entrypoint(yaml_deployment["entrypoint"]).name
        assert runner.parameters == yaml_deployment.get("parameters", {}), name
        assert runner.tags == yaml_deployment["tags"], name
        assert runner.description == yaml_deployment["description"], name
        assert [s.schedule for s in runner.schedules] == [yaml_schedule(s) for s in yaml_deployment["schedules"]]
        assert [s.active for s in runner.schedules] == [s.get("active", True) for s in yaml_deployment["schedules"]]
        limit, strategy = yaml_concurrency(yaml_deployment)
        assert runner.concurrency_limit == limit, name
        got_strategy = runner.concurrency_options.collision_strategy if runner.concurrency_options else None
        assert (got_strategy.value if got_strategy else None) == strategy, name
        # served runs find the flow wherever the package is installed
        assert runner.entrypoint == f"kling_prefect.flows.{runner.flow_name.removeprefix('kling-').replace('-', '_')}"


def test_no_client_crosses_a_task_boundary() -> None:
    """Task parameters and results are plain data: names of blocks, requests, specs; never a live client."""
    import httpx

    from kling_prefect.client import ShortAPIClient
    from kling_prefect.flows import join_and_store, publish_images, publish_last_frame

    live = (ShortAPIClient, httpx.AsyncClient, httpx.Client)
    tasks = (
        submit_kling_job,
        wait_for_kling_job,
        store_kling_video,
        publish_last_frame,
        publish_images,
        join_and_store,
    )
    for task in tasks:
        hints = typing.get_type_hints(task.fn)
        for where, hint in hints.items():
            leaves = typing.get_args(hint) or (hint,)
            for leaf in leaves:
                assert not (isinstance(leaf, type) and issubclass(leaf, live)), f"{task.name}.{where}: {hint}"


# ============================================================================================ fast: pickling


def sample_submitted() -> SubmittedJob:
    return SubmittedJob(
        job_id="job-1",
        model="kwaivgi/kling-o3/text-to-video",
        run_key="run-1",
        step="clip-01",
        args={"prompt": "p", "duration": 5},
        estimated_cost=Decimal("0.475"),
        amount=Decimal("0.5"),
        video_seconds=5,
        created_at=123.5,
    )


def sample_request(model: type) -> Any:
    if model is KlingO1ImageToVideo:
        return model(action="frame", prompt="go on", images=["https://example.com/frame.png"], duration=5)
    return model(prompt="A lighthouse at dawn")


def error_samples() -> list[exceptions.ShortAPIError]:
    extras = {"retry_after": 2.5, "status": 9, "last_status": 1}
    samples = []
    for cls in vars(exceptions).values():
        if not (isinstance(cls, type) and issubclass(cls, exceptions.ShortAPIError)):
            continue
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in extras.items() if k in accepted}
        error = cls("it broke", job_id="job-9", status_code=502, raw={"code": 1, "msg": "x"}, **kwargs)
        error.submitted = sample_submitted()
        samples.append(error)
    return samples


def test_every_task_value_and_error_pickles() -> None:
    submitted = sample_submitted()
    video = StoredObject(uri="file:///tmp/a.mp4", key="a.mp4", size_bytes=10, local_path="/tmp/a.mp4")
    values: list[Any] = [
        submitted,
        FinishedJob(submitted=submitted, video_urls=("https://x/v.mp4",), finished_at=5.0),
        StoredVideo(submitted=submitted, video=video, duration_seconds=5.0, width=64, height=36, thumbnail=video),
        StorageSpec(directory="/tmp/out", s3_bucket_block="bucket", prefix="kling/run-1"),
        ClipRecord(step="clip-01", prompt="p", model="m", status="stored", estimated_cost=Decimal("0.4")),
        RunResult(run_key="run-1", records=[], final=video),
        PlannedImage(
            field="keyframes[1]", source="a.png", name="keyframe-01", data=b"x", format="png", width=4, height=2
        ),
        *(sample_request(model) for model in REQUEST_MODELS),
    ]
    assert len(REQUEST_MODELS) >= 5
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        for value in values:
            assert loads(dumps(value)) == value, type(value).__name__
        errors = [*error_samples(), ConcurrencyLimitUnavailable("no such limit 'x'", limit_name="x")]
        assert len(errors) >= 10
        for error in errors:
            copy = loads(dumps(error))
            assert type(copy) is type(error)
            assert str(copy) == str(error)
            assert copy.__dict__ == error.__dict__, type(error).__name__
    assert pickle.loads(pickle.dumps(errors[0])).job_id == "job-9"


# ============================================================================================ real server


POOL = "kling-process"


def sync_client(server: PrefectServer) -> SyncPrefectClient:
    return SyncPrefectClient(server.api_url)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A fresh `prefect server start`, a process work pool, `kling-prefect setup`, `prefect deploy --all`."""
    home = tmp_path_factory.mktemp("deploy-server")
    server = PrefectServer(home=home, port=free_port()).start()
    try:
        env = server.env()
        # Independent: create the pool and run setup at the same time.
        pool = subprocess.Popen(
            [PREFECT, "work-pool", "create", POOL, "--type", "process"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        setup = run_command([KLING_PREFECT, "setup", "--jobs-limit", "5"], env)
        pool_out, _ = pool.communicate(timeout=120)
        assert pool.returncode == 0, pool_out.decode(errors="replace")
        assert f"{DEFAULT_JOBS_LIMIT!r} created: 5 jobs in flight" in setup.stdout
        before = PREFECT_YAML.read_bytes()
        run_command([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
        assert PREFECT_YAML.read_bytes() == before, "prefect deploy rewrote deployments/prefect.yaml"
        yield server
    finally:
        server.stop()


def flow_name_of(entrypoint: str) -> str:
    return {
        "text_to_video": "kling-text-to-video",
        "continuation": "kling-continuation",
        "batch": "kling-batch",
        "storyboard": "kling-storyboard",
    }[entrypoint.rsplit(":", 1)[1]]


@pytest.mark.slow
def test_server_holds_the_deployments_and_schedules(deployed) -> None:
    with sync_client(deployed) as client:
        assert client.read_work_pool(POOL).type == "process"
        assert client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT).limit == 5
        for name, declared in deployments_by_name().items():
            held = client.read_deployment_by_name(f"{flow_name_of(declared['entrypoint'])}/{name}")
            assert held.entrypoint == declared["entrypoint"]
            assert held.work_pool_name == POOL
            assert held.parameters == declared["parameters"]
            assert sorted(held.tags) == sorted(declared["tags"])
            assert [s.schedule for s in held.schedules] == [yaml_schedule(s) for s in declared["schedules"]]
            assert all(s.active for s in held.schedules)
            limit, strategy = yaml_concurrency(declared)
            if limit is None:
                assert held.global_concurrency_limit is None
            else:
                assert held.global_concurrency_limit.limit == limit
            if strategy:
                assert held.concurrency_options.collision_strategy.value == strategy
            # the working directory the pull step changes into: where `prefect deploy` ran
            assert held.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        # spelled out, so a change to the yaml shows up here too
        story = client.read_deployment_by_name("kling-continuation/daily-story")
        assert story.schedules[0].schedule == CronSchedule(cron="30 7 * * 1-5", timezone="Europe/Berlin")
        assert story.parameters["max_cost_usd"] == 5.0 and len(story.parameters["prompts"]) == 3
        batch_held = client.read_deployment_by_name("kling-batch/batch-every-6h")
        assert batch_held.schedules[0].schedule.interval == timedelta(hours=6)
        assert batch_held.schedules[0].schedule.timezone == "UTC"
        clip = client.read_deployment_by_name("kling-text-to-video/daily-clip")
        schedule_id = clip.schedules[0].id

    # README: pause and resume a schedule with the CLI
    env = deployed.env()
    run_command([PREFECT, "deployment", "schedule", "pause", "kling-text-to-video/daily-clip", str(schedule_id)], env)
    with sync_client(deployed) as client:
        assert not client.read_deployment_by_name("kling-text-to-video/daily-clip").schedules[0].active
    run_command([PREFECT, "deployment", "schedule", "resume", "kling-text-to-video/daily-clip", str(schedule_id)], env)
    with sync_client(deployed) as client:
        assert client.read_deployment_by_name("kling-text-to-video/daily-clip").schedules[0].active


@pytest.mark.slow
def test_worker_runs_the_continuation_deployment(deployed, emulator, tmp_path) -> None:
    run_key = f"deploy-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "story"
    fast = {
        "prompts": ["A paper boat on a canal", "It drifts under a bridge", "It reaches the harbour"],
        "duration": 3,
        "poll_interval": 0.1,
        "output_dir": str(out),
        "run_key": run_key,
    }
    with sync_client(deployed) as client:
        deployment = client.read_deployment_by_name("kling-continuation/daily-story")
        run = client.create_flow_run_from_deployment(deployment.id, parameters=fast)
    log = tmp_path / "worker.log"
    vendor = {"SHORTAPI_KEY": TEST_KEY, "SHORTAPI_BASE_URL": emulator.base_url}
    wait_worker(start_worker(POOL, deployed.env(vendor), log), log)

    with sync_client(deployed) as client:
        finished = client.read_flow_run(run.id)
        assert finished.state.is_completed(), f"{finished.state}\n{tail(log)}"
        # defaults from prefect.yaml were kept where not overridden
        assert finished.parameters["jobs_limit"] == DEFAULT_JOBS_LIMIT
        assert finished.parameters["max_cost_usd"] == 5.0
        # keys are stable per deployment: each run of daily-story is a new version of the same artifacts
        keys = ["kling-daily-story-summary", "kling-daily-story-clips"]
        artifacts = {
            a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        }
        limit = client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT)
    assert set(artifacts) == set(keys), tail(log)
    assert artifacts[keys[0]].type == "markdown" and artifacts[keys[1]].type == "table"
    assert all(a.flow_run_id == run.id for a in artifacts.values())
    assert run_key in artifacts[keys[0]].data
    assert limit.active_slots == 0, "a job slot was not given back"

    stats = emulator.stats()
    assert stats.creates == 3 and stats.max_in_flight == 1
    final = out / "final.mp4"
    assert media.is_decodable_mp4(final)
    info = media.probe(final)
    clips = [media.probe(out / f"clip-{i:02d}.mp4").duration_seconds for i in (1, 2, 3)]
    assert info.duration_seconds == pytest.approx(sum(clips), abs=0.5)
    assert clips[0] == pytest.approx(3, abs=0.2)


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow
def test_two_workers_share_a_limit_of_two_jobs_in_flight(deployed, tmp_path) -> None:
    env = deployed.env()
    setup = run_command([KLING_PREFECT, "setup", "--jobs-limit", "2"], env)
    assert f"{DEFAULT_JOBS_LIMIT!r} updated: 2 jobs in flight" in setup.stdout
    queues = ["worker-a", "worker-b"]
    runs = {}
    with sync_client(deployed) as client:
        assert client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT).limit == 2
        deployment = client.read_deployment_by_name("kling-batch/batch-every-6h")
        for queue in queues:
            client.create_work_queue(queue, work_pool_name=POOL)
            params = {
                "prompts": [{"prompt": f"{queue} shot {i}", "duration": 3} for i in range(4)],
                "max_concurrency": 4,  # each run alone would put 4 jobs in flight
                "poll_interval": 0.1,
                "output_dir": str(tmp_path / queue),
                "run_key": f"{queue}-{uuid.uuid4().hex[:8]}",
            }
            runs[queue] = client.create_flow_run_from_deployment(
                deployment.id, parameters=params, work_queue_name=queue
            )

    # Jobs of ~3 s (time_scale 0.03): each run alone would have 4 in flight at once, and a job outlasts the time
    # a freed slot takes to reach the other run on busy cores (with ~1 s jobs the two slots were seen never full).
    with Emulator(time_scale=0.03, seed=11, timing_jitter=0.1) as emulator:
        vendor = {"SHORTAPI_KEY": TEST_KEY, "SHORTAPI_BASE_URL": emulator.base_url}
        logs = {queue: tmp_path / f"{queue}.log" for queue in queues}
        workers = {q: start_worker(POOL, deployed.env(vendor), logs[q], work_queue=q) for q in queues}
        for queue, worker in workers.items():
            wait_worker(worker, logs[queue])
        stats = emulator.stats()

    with sync_client(deployed) as client:
        finished = {queue: client.read_flow_run(run.id) for queue, run in runs.items()}
        limit = client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT)
    for queue, run in finished.items():
        assert run.state.is_completed(), f"{queue}: {run.state}\n{tail(logs[queue])}"
    a, b = (finished[q] for q in queues)
    # Both flow runs were running at the same time, each wanting 4 jobs in flight: only the shared limit
    # can explain the vendor never seeing more than 2. (Which run gets a freed slot is up to the server.)
    assert intervals_overlap((a.start_time, a.end_time), (b.start_time, b.end_time)), (
        "the two flow runs did not run at the same time: nothing was shared"
    )
    assert stats.creates == 8
    assert stats.max_in_flight <= 2, f"the vendor saw {stats.max_in_flight} jobs in flight at once"
    assert stats.max_in_flight == 2, "the two slots were never used together"
    assert limit.active_slots == 0, "a job slot was not given back"
    per_run = [sum(j.args["prompt"].startswith(q) for j in stats.jobs.values()) for q in queues]
    assert per_run == [4, 4]
    for queue in queues:
        stored = sorted((tmp_path / queue).glob("item-*.mp4"))
        assert len(stored) == 4 and all(media.is_decodable_mp4(p) for p in stored), queue


# ============================================================================================ in-process


FAST = {"poll_interval": 0.05, "timeout_seconds": 120}


@pytest.mark.usefixtures("prefect_server")
async def test_missing_jobs_limit_fails_before_any_create(vendor_env, tmp_path) -> None:
    name = f"kling-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConcurrencyLimitUnavailable, match=name) as caught:
        await text_to_video(prompt="A lighthouse", duration=3, jobs_limit=name, output_dir=str(tmp_path), **FAST)
    assert "does not exist" in str(caught.value) and "kling-prefect setup" in str(caught.value)
    stats = vendor_env.stats()
    assert stats.creates == 0 and stats.create_requests == 0


@pytest.mark.usefixtures("prefect_server")
async def test_create_rate_limit_spaces_creates(vendor_env, tmp_path) -> None:
    suffix = uuid.uuid4().hex[:6]
    jobs, creates = f"kling-jobs-{suffix}", f"kling-creates-{suffix}"
    await setup_limits(jobs_limit_name=jobs, jobs_limit=3, creates_per_second=1.0, create_limit_name=creates)
    result = await batch(
        prompts=[{"prompt": f"shot {i}", "duration": 3} for i in range(2)],
        max_concurrency=2,
        jobs_limit=jobs,
        create_rate_limit=creates,
        output_dir=str(tmp_path),
        **FAST,
    )
    assert not result.failed
    created = sorted(job.created_at for job in vendor_env.stats().jobs.values())
    assert len(created) == 2
    # 1 create per second, burst 1: the second create waits for the first one's slot to decay (~1 s);
    # without the limit both would be created within milliseconds of each other.
    assert created[1] - created[0] >= 0.8, f"creates {created[1] - created[0]:.2f} s apart"


def run_tasks(prompts: list[str], run_key: str, directory: str) -> list[StoredVideo]:
    """submit -> wait -> store for each prompt, every call a `.submit` to the flow's task runner."""
    storage = StorageSpec(directory=directory)
    submitted = [
        submit_kling_job.submit(KlingO3TextToVideo(prompt=p, duration=3), run_key=run_key, step=f"clip-{i:02d}")
        for i, p in enumerate(prompts, start=1)
    ]
    finished = [wait_for_kling_job.submit(s, poll_interval=0.05, timeout=120) for s in submitted]
    stored = [store_kling_video.submit(f, storage=storage) for f in finished]
    return [s.result() for s in stored]


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def threaded_tasks(prompts: list[str], run_key: str, directory: str) -> list[StoredVideo]:
    return run_tasks(prompts, run_key, directory)


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def process_pool_tasks(prompts: list[str], run_key: str, directory: str) -> list[StoredVideo]:
    return run_tasks(prompts, run_key, directory)


def check_stored(videos: list[StoredVideo], emulator, count: int) -> None:
    assert len(videos) == count and all(isinstance(v, StoredVideo) for v in videos)
    assert len({v.job_id for v in videos}) == count
    assert {v.job_id for v in videos} == set(emulator.stats().jobs)
    for video in videos:
        assert media.is_decodable_mp4(video.local_path)
        assert video.duration_seconds == pytest.approx(3, abs=0.2)


@pytest.mark.usefixtures("prefect_server")
def test_tasks_under_the_thread_pool_task_runner(vendor_env, tmp_path) -> None:
    prompts = ["A fox in snow", "Rain on neon streets", "A balloon over hills"]
    videos = threaded_tasks(prompts, f"threads-{uuid.uuid4().hex[:8]}", str(tmp_path))
    check_stored(videos, vendor_env, 3)
    assert [Path(v.local_path).name for v in videos] == ["clip-01.mp4", "clip-02.mp4", "clip-03.mp4"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_tasks_under_the_process_pool_task_runner(vendor_env, tmp_path) -> None:
    """Every task input and result crosses a process boundary (spawned workers, cloudpickle)."""
    videos = process_pool_tasks(
        ["A fox in snow", "Rain on neon streets"], f"procs-{uuid.uuid4().hex[:8]}", str(tmp_path)
    )
    check_stored(videos, vendor_env, 2)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_tasks_under_the_dask_task_runner(vendor_env, tmp_path) -> None:
    """Inputs and results cross into a Dask worker process (a LocalCluster of one process, two threads)."""
    from distributed import get_worker  # a test dependency (prefect-dask): a missing one must fail, not skip
    from prefect import task
    from prefect_dask import DaskTaskRunner

    @task
    def where() -> tuple[int, str]:
        return os.getpid(), get_worker().address  # get_worker() raises outside a Dask worker

    # One worker process with two threads: fits two shared cores, and still crosses a process boundary.
    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": True}))
    def dask_tasks(prompts: list[str], run_key: str, directory: str) -> tuple[list[StoredVideo], tuple[int, str]]:
        return run_tasks(prompts, run_key, directory), where.submit().result()

    videos, (pid, address) = dask_tasks(
        ["A fox in snow", "Rain on neon streets"], f"dask-{uuid.uuid4().hex[:8]}", str(tmp_path)
    )
    check_stored(videos, vendor_env, 2)
    assert pid != os.getpid() and address.startswith("tcp://"), "the tasks did not run in a Dask worker process"
