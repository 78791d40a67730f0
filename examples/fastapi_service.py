"""A FastAPI service that runs a background job only while it leads.

    TRIO_ELECTION_ENDPOINTS=127.0.0.1:50051 NODE_ID=api-1 uvicorn examples.fastapi_service:app

Every replica of the service campaigns for one election; the one that leads
runs the job (here: counting ticks with the fencing token), the others wait
their turn. Losing leadership cancels the job at once (the asyncio client
runs it inside an ``asyncio.timeout`` that each heartbeat moves), and the
replica campaigns again. ``GET /leader`` says who leads and what this replica
has done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

from trio_election import LeadershipLost
from trio_election.aio import open_client

ENDPOINTS = os.environ.get("TRIO_ELECTION_ENDPOINTS", "127.0.0.1:50051").split(",")
NODE_ID = os.environ.get("NODE_ID", "api-1")
ELECTION = os.environ.get("ELECTION", "report-job")

state = {"leading": False, "token": 0, "ticks": 0}


async def job(token: int) -> None:
    """The work only the leader may do; ``token`` goes to whatever it writes."""
    while True:
        state["ticks"] += 1
        await asyncio.sleep(0.1)


async def lead_when_elected() -> None:
    async with open_client(ENDPOINTS) as client:
        while True:
            try:
                async with client.leadership(ELECTION, node_id=NODE_ID, ttl=5) as lead:
                    state.update(leading=True, token=lead.fencing_token)
                    await job(lead.fencing_token)
            except LeadershipLost:
                pass  # campaign again
            finally:
                state["leading"] = False


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(lead_when_elected())
    try:
        yield
    finally:
        task.cancel()  # leaving leadership() releases the election
        with contextlib.suppress(asyncio.CancelledError):
            await task


app = FastAPI(lifespan=lifespan)


@app.get("/leader")
async def leader() -> dict[str, object]:
    async with open_client(ENDPOINTS) as client:
        holder = await client.get_leader(ELECTION)
    return {
        "election": ELECTION,
        "holder": None if holder is None else holder.node_id,
        "fencing_token": None if holder is None else holder.fencing_token,
        "this_replica": {"node_id": NODE_ID, **state},
    }
