"""A Trio worker that does its job only while it leads.

    python examples/trio_worker.py --endpoints 127.0.0.1:50051 --node-id worker-1

Each step passes the fencing token to what it touches; if leadership is lost
(the node goes silent, someone else is granted), the body is cancelled before
the server could hand the election to anyone else, and the worker campaigns
again. ``--steps N`` stops after N steps (for trying it out).
"""

from __future__ import annotations

import argparse

import trio

from trio_election import LeadershipLost, open_client


async def work(step: int, token: int) -> None:
    print(f"step {step} with fencing token {token}", flush=True)
    await trio.sleep(0.2)


async def main(endpoints: list[str], node_id: str, election: str, steps: int | None) -> None:
    done = 0
    async with open_client(endpoints) as client:
        while steps is None or done < steps:
            try:
                async with client.leadership(election, node_id=node_id, ttl=5) as lead:
                    print(f"{node_id} leads {election!r} (token {lead.fencing_token})", flush=True)
                    while steps is None or done < steps:
                        await work(done, lead.fencing_token)
                        done += 1
            except LeadershipLost as exc:
                print(f"lost: {exc}; campaigning again", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", default="127.0.0.1:50051")
    parser.add_argument("--node-id", default="worker-1")
    parser.add_argument("--election", default="nightly-report")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    trio.run(main, args.endpoints.split(","), args.node_id, args.election, args.steps)
