"""A bounded load test on 127.0.0.1: 50 concurrent uploads, every fifth malformed. Every good one is accepted
as a job, every bad one gets its own error naming its file, nothing half-made is left, and the server stays up.
Runners are not started (``start_jobs=False``): this measures the server, not the sampler."""

from __future__ import annotations

import asyncio
import time

import httpx

from chemgen.web import jobs
from chemgen.web.settings import WebSettings
from tests.web.conftest import live_server

UPLOADS = 50
BAD = [("empty-{i}.csv", b""), ("binary-{i}.jdx", b"\x00\x01\x02\x03"), ("photo-{i}.png", b"\x89PNG...."),
       ("no-units-{i}.csv", b"a,b\n1000,1\n1100,2\n1200,1\n")]


def test_fifty_concurrent_uploads_good_and_bad(tmp_path, uploads):
    settings = WebSettings(home=tmp_path / "web", start_jobs=False, jobs_per_minute=100)   # one user, fifty at once
    good_bytes = uploads["ir"].read_bytes()
    plan = [(f"good-{i}.jdx", good_bytes, True) if i % 5 else (BAD[(i // 5) % len(BAD)][0].format(i=i),
                                                               BAD[(i // 5) % len(BAD)][1], False)
            for i in range(UPLOADS)]

    async def upload(client: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
        return await client.post("/api/elucidate", files={"ir": (name, data)})

    async def storm(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=UPLOADS)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(upload(client, name, data) for name, data, _ in plan))

    with live_server(settings) as base:
        start = time.perf_counter()
        replies = asyncio.run(storm(base))
        seconds = time.perf_counter() - start
        assert httpx.get(f"{base}/healthz").json() == {"ok": True}
    for (name, _, good), reply in zip(plan, replies, strict=True):
        if good:
            assert reply.status_code == 202, (name, reply.text)
        else:
            assert 400 <= reply.status_code < 500 and reply.json()["error"].startswith(name), (name, reply.text)
    accepted = {r.json()["job"] for r, (_, _, good) in zip(replies, plan, strict=True) if good}
    assert len(accepted) == sum(good for *_, good in plan) == 40
    assert {r["id"] for r in jobs.list_jobs(settings.jobs_dir, limit=100)} == accepted
    assert not [p for p in settings.jobs_dir.iterdir() if p.name.startswith(jobs.STAGING_PREFIX)]
    assert seconds < 120, f"{UPLOADS} concurrent uploads took {seconds:.0f} s"   # bounded, not a benchmark
