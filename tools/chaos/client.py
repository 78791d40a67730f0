"""One client process of the harness: campaigns, holds, releases and reads.

``python -m tools.chaos.client --name c1 --endpoints A,B,C --out c1.jsonl ...``

It does what a service using the client library does: ``Client.leadership()``
on one of a few elections (so clients contend), a body that works for a
while (often longer than the TTL, so renewals matter), and an explicit
release; between holds, linearizable reads of who leads. Every request is a
JSON line with its local send and receive times on ``time.monotonic()`` (see
``history.py``); while holding it writes its current deadline every tick, so a
hold of a client that dies still has an end.

Each client reconnects from time to time with its endpoints in a new random
order, so requests reach every node (followers forward to the Raft leader).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import IO, Any

import trio

from trio_election import open_client
from trio_election._errors import ElectionError, LeadershipLost
from trio_election.client import Client

from .orphan import exit_with_parent

#: How often a holding body writes its deadline.
TICK = 0.1


class Log:
    def __init__(self, name: str, out: IO[str]) -> None:
        self.name = name
        self.out = out
        # Trio's clock is monotonic with an offset of its own: one subtraction
        # turns it into time.monotonic(), which every process here shares.
        self.offset = time.monotonic() - trio.current_time()

    def mono(self, trio_time: float) -> float:
        return trio_time + self.offset if math.isfinite(trio_time) else trio_time

    def write(self, op: str, **fields: Any) -> None:
        self.out.write(json.dumps({"op": op, "client": self.name, **fields}) + "\n")
        self.out.flush()


async def hold(
    client: Client,
    log: Log,
    rng: random.Random,
    election: str,
    ttl: float,
    work: tuple[float, float],
) -> None:
    """Campaign (giving up after a while), hold for ``work`` TTLs, release."""
    work_s = rng.uniform(work[0] * ttl, work[1] * ttl)
    with trio.move_on_after(rng.uniform(1, 4 * ttl)) as waiting:
        try:
            async with client.leadership(election, node_id=log.name, ttl=ttl) as lead:
                waiting.deadline = math.inf  # elected: stop waiting, hold
                token = lead.fencing_token
                where = {"election": election, "token": token}
                log.write("hold", start=time.monotonic(), deadline=log.mono(lead.deadline), **where)
                ending: float | None = None
                try:
                    until = trio.current_time() + work_s
                    while trio.current_time() < until:
                        await trio.sleep(TICK)
                        log.write("tick", deadline=log.mono(lead.deadline), **where)
                    ending = time.monotonic()  # it stops acting as leader before releasing
                    try:
                        released = await client.release(election, log.name, token)
                    except ElectionError as exc:
                        log.write("release", error=str(exc), **where)
                    else:
                        log.write("release", received=time.monotonic(), released=released, **where)
                finally:
                    # The body stopped believing here, or at its deadline if that came first.
                    log.write(
                        "end",
                        how="lost" if lead.lost else "released",
                        at=time.monotonic() if ending is None else ending,
                        deadline=log.mono(lead.deadline),
                        **where,
                    )
        except LeadershipLost:
            pass  # its "end" line is written, with the deadline that ended it
        except ElectionError as exc:
            log.write("campaign-error", election=election, error=str(exc))
    if waiting.cancelled_caught:
        log.write("campaign-gave-up", election=election)


async def read(client: Client, log: Log, election: str) -> None:
    sent = time.monotonic()
    try:
        leader = await client.get_leader(election)
    except ElectionError as exc:
        log.write("read", election=election, sent=sent, error=str(exc))
        return
    token = 0 if leader is None else leader.fencing_token
    log.write("read", election=election, sent=sent, received=time.monotonic(), token=token)


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    elections = [f"{args.prefix}{i}" for i in range(args.elections)]
    endpoints = args.endpoints.split(",")
    with open(args.out, "a") as out:
        log = Log(args.name, out)
        until = trio.current_time() + args.duration
        while trio.current_time() < until:
            rng.shuffle(endpoints)
            with trio.move_on_at(until):
                async with open_client(endpoints, timeout=args.timeout) as client:
                    for _ in range(rng.randint(3, 12)):
                        election = rng.choice(elections)
                        if rng.random() < 0.7:
                            await hold(client, log, rng, election, args.ttl, args.hold)
                        else:
                            await read(client, log, election)


def span(text: str) -> tuple[float, float]:
    """``LOW-HIGH``, in TTLs: how long a holder's body works."""
    low, _, high = text.partition("-")
    try:
        bounds = float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH, e.g. 0.1-3") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
    return bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.client")
    parser.add_argument("--name", required=True)
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--elections", type=int, default=3)
    parser.add_argument("--prefix", default="chaos/")
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--hold", type=span, default=(0.1, 3.0))
    args = parser.parse_args(argv)
    exit_with_parent()
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
