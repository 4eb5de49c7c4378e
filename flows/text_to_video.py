"""Example: one prompt, any text-to-video model, stored output.

Copy this file into your project, change the defaults, and deploy it (see deployments/prefect.yaml):

    prefect deploy flows/text_to_video.py:text_to_video --name daily-clip --pool my-pool

Run it once locally (SHORTAPI_KEY set, or a saved ShortAPICredentials block named in credentials_block):

    python flows/text_to_video.py "A lighthouse at dawn, waves crashing"
"""

from __future__ import annotations

import asyncio
import sys

from kling_prefect.flows import text_to_video

__all__ = ["text_to_video"]

if __name__ == "__main__":
    prompt = " ".join(sys.argv[1:]) or "A lighthouse at dawn, waves crashing, cinematic"
    result = asyncio.run(text_to_video(prompt=prompt, model="kling-o3", duration=5, max_cost_usd=1.0))
    print(result.records[0].uri)
