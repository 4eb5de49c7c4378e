"""Example: a story in clips. The first prompt goes through a text-to-video model; every further prompt is an
image-to-video continuation started from the previous clip's last frame; the clips are joined into final.mp4.

Deploy with deployments/prefect.yaml, or run once:

    python flows/continuation.py "A paper boat sets sail" "It drifts into a storm" "It reaches a sunny shore"

With an S3Bucket block (prefect-aws), frames are handed to the API as presigned URLs and outputs are uploaded:
pass s3_bucket_block="my-bucket". Without one, frames travel inline as data URIs (with a warning).
"""

from __future__ import annotations

import asyncio
import sys

from kling_prefect.flows import continuation

__all__ = ["continuation"]

if __name__ == "__main__":
    prompts = sys.argv[1:] or [
        "A paper boat is set on a calm canal at sunrise",
        "The paper boat drifts under an old stone bridge",
        "The paper boat glides into a sunny harbour",
    ]
    result = asyncio.run(continuation(prompts=prompts, model="kling-o3", max_cost_usd=5.0))
    print(result.final.uri if result.final else "no final video")
