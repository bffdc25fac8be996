"""In-cluster client for the real-pods tier: POST /prompt in a loop through a Service, report every outcome.

python3 promptloop.py URL SECONDS CONCURRENCY PROMPT_SECONDS
Prints one JSON line at the end: {"sent", "ok", "codes": {code: count}, "failures": [first 20 failures]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp

MAX_PROMPTS = 5000


def prompt(seconds: float, index: int) -> dict[str, object]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": index},
        },
        "2": {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 2}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loop"}},
    }


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    deadline: float,
    seconds: float,
    codes: Counter[str],
    failures: list[str],
) -> None:
    while time.monotonic() < deadline and sum(codes.values()) < MAX_PROMPTS:
        started = time.monotonic()
        try:
            async with session.post(url, json={"prompt": prompt(seconds, sum(codes.values()))}) as response:
                body = await response.read()
                code = str(response.status)
                if response.status != 200:
                    failures.append(f"{code} after {time.monotonic() - started:.1f}s: {body[:200]!r}")
        except (TimeoutError, aiohttp.ClientError) as error:
            code = f"error:{type(error).__name__}"
            failures.append(f"{code} after {time.monotonic() - started:.1f}s: {error}")
        codes[code] += 1


async def main(url: str, seconds: float, concurrency: int, prompt_seconds: float) -> None:
    codes: Counter[str] = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(
            *(worker(session, url, deadline, prompt_seconds, codes, failures) for _ in range(concurrency))
        )
    print(
        json.dumps(
            {"sent": sum(codes.values()), "ok": codes["200"], "codes": codes, "failures": failures[:20]}
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
