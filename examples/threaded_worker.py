"""A worker for threaded programs (Django, Flask, Celery): the blocking client.

    python examples/threaded_worker.py --endpoints 127.0.0.1:50051 --node-id worker-1

The blocking client renews in a background thread and *tells* the body when
leadership ends; it cannot cancel it. So the body checks before every step
that touches a shared resource (``lead.check()`` raises ``LeadershipLost``),
and passes the fencing token along, so that a step already under way when
leadership ended is refused by the resource. ``--steps N`` stops after N.
"""

from __future__ import annotations

import argparse
import time

from trio_election import LeadershipLost
from trio_election.sync import open_client


def work(step: int, token: int) -> None:
    print(f"step {step} with fencing token {token}", flush=True)
    time.sleep(0.2)


def main(endpoints: list[str], node_id: str, election: str, steps: int | None) -> None:
    done = 0
    with open_client(endpoints) as client:
        while steps is None or done < steps:
            try:
                with client.leadership(election, node_id=node_id, ttl=5) as lead:
                    print(f"{node_id} leads {election!r} (token {lead.fencing_token})", flush=True)
                    while steps is None or done < steps:
                        lead.check()  # raises LeadershipLost once it is gone
                        work(done, lead.fencing_token)
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
    main(args.endpoints.split(","), args.node_id, args.election, args.steps)
