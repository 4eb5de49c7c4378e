"""Example: a video through designed keyframes. Each clip goes from one keyframe to the next (Kling o1
image-to-video, first and last frame), all clips are made at once, and they are joined into final.mp4. The
run's summary shows each keyframe beside the final video at its point.

Deploy with deployments/prefect.yaml (its sample keyframes are deployments/keyframes/*.png), or run once:

    python flows/storyboard.py dawn.png noon.png dusk.png -- "The sun climbs over the hills" "The sun sets"

Keyframes are local files or http(s) URLs, all of one aspect ratio. With an S3Bucket block (prefect-aws),
local keyframes are handed to the API as presigned URLs: pass s3_bucket_block="my-bucket". Without one, they
travel inline as data URIs (with a warning).
"""

from __future__ import annotations

import asyncio
import sys

from kling_prefect.flows import storyboard

__all__ = ["storyboard"]

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--" in arguments:
        keyframes, prompts = arguments[: arguments.index("--")], arguments[arguments.index("--") + 1 :]
    else:
        keyframes = ["deployments/keyframes/01-dawn.png", "deployments/keyframes/02-noon.png"]
        keyframes.append("deployments/keyframes/03-dusk.png")
        prompts = ["The sun climbs over the green hills", "The sun sinks behind the hills, the sky turns red"]
    result = asyncio.run(storyboard(keyframes=keyframes, prompts=prompts, duration=5, max_cost_usd=2.0))
    print(result.final.uri if result.final else "no final video")
