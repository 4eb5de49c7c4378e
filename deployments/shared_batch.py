"""Register the batch deployment for workers that share no disk: only the Prefect server, S3 and Redis.

    python deployments/shared_batch.py --videos kling-videos --results s3-bucket/kling-results

registers ``kling-batch/shared-batch`` on the process pool ``kling-process`` (see deployments/README.md,
"Workers that share no disk"):

- the entrypoint is the installed module (``kling_prefect.flows.batch``) and there is no pull step: a worker needs
  ``pip install 'kling-prefect[redis]'``, not this checkout, and each flow run runs in a temporary folder of the
  worker that took it (its local copies of the clips stay there);
- every flow run's Prefect result storage is the S3 bucket block ``--results`` (the job variable
  ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``): the steps' ledgers and cached submissions, which every worker must
  read, whoever made them;
- clips go to the S3 bucket block ``--videos``, under ``kling/<run key>/``;
- items are named by content (``item_names="content"``): flow runs given one ``run_key`` create and store an
  item they both hold once;
- each job holds a slot of the jobs limit ``--jobs-limit`` (``kling-prefect setup --jobs-limit N``).

The step leases are the workers' part: ``SHORTAPI_LEASE_URL=redis://...`` in each worker's environment (or
``lease_url`` on the credentials block the runs name).
"""

from __future__ import annotations

import argparse

from prefect.deployments.runner import EntrypointType

from kling_prefect.concurrency import DEFAULT_JOBS_LIMIT
from kling_prefect.flows import batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="name of the S3Bucket block the clips go to")
    parser.add_argument(
        "--results", required=True, help="the result storage block as <type>/<name>, e.g. s3-bucket/kling-results"
    )
    parser.add_argument("--name", default="shared-batch", help="the deployment's name (default: %(default)s)")
    parser.add_argument("--pool", default="kling-process", help="the work pool (default: %(default)s)")
    parser.add_argument("--jobs-limit", default=DEFAULT_JOBS_LIMIT, help="the jobs limit (default: %(default)s)")
    parser.add_argument("--max-concurrency", type=int, default=4, help="jobs per flow run (default: %(default)s)")
    args = parser.parse_args(argv)
    if "/" not in args.results:
        parser.error(f"--results must be <block type>/<block name>, such as s3-bucket/{args.results}")
    deployment = batch.to_deployment(
        name=args.name,
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=args.pool,
        description="A batch of prompts on workers that share no disk: results and clips on S3, items by content.",
        tags=["kling", "video", "batch"],
        parameters={
            "s3_bucket_block": args.videos,
            "jobs_limit": args.jobs_limit,
            "max_concurrency": args.max_concurrency,
            "item_names": "content",
        },
        job_variables={"env": {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": args.results}},
    )
    deployment_id = deployment.apply()
    print(f"deployment kling-batch/{args.name} registered ({deployment_id}) on work pool {args.pool!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
