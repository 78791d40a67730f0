"""The checker: what the clients saw, read back against the safety promise.

Every client process writes one JSON object per line (see ``client.py``); all
times are ``time.monotonic()`` on this machine, which every process shares, so
intervals of different clients can be compared. (On several machines they
could not; the harness runs on one.)

A *hold* is one body of ``Client.leadership()``: from when the body started
until it stopped believing, which is the earlier of the moment it ended (or
sent its release) and its own deadline, ``send time of the last good
heartbeat + ttl - margin`` (DESIGN.md, promise 4). A client paused by SIGSTOP
past its deadline cannot do anything before it is cancelled, so its hold ends
at the deadline, not when it woke.

Violations found:

* ``overlap``: two holds of one election intersect;
* ``token-order``: fencing tokens of one election do not strictly increase in
  the order the holds began. The one repeat allowed is a client campaigning
  again for a grant it still held on the server (it stopped believing, for
  want of a heartbeat, before the server let the grant go): the server answers
  with the same grant, which nobody else held in between;
* ``stale-read``: a read answered a holder older than a grant that had been
  acknowledged before the read was sent, or did not answer the holder whose
  hold spanned the whole read;
* ``released-read``: a read sent after a release was acknowledged still
  answered the released grant.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Hold:
    client: str
    election: str
    token: int
    start: float
    end: float
    #: "released", "lost" (LeadershipLost), or "unfinished" (the client died).
    how: str


@dataclass(frozen=True)
class Read:
    client: str
    election: str
    sent: float
    received: float
    #: The holder's token, or 0 when the answer was "nobody holds it".
    token: int


@dataclass(frozen=True)
class Release:
    client: str
    election: str
    token: int
    received: float


@dataclass(frozen=True)
class Violation:
    kind: str
    election: str
    detail: str


@dataclass
class History:
    holds: list[Hold] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    #: Requests by outcome: {"ok": n, "error": n, "gave-up": n}, per kind.
    requests: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )


def load(paths: Iterable[Path]) -> History:
    """Read the clients' logs into one history."""
    history = History()
    for path in paths:
        open_holds: dict[tuple[str, str, int], dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short when the client was killed
            add(history, record, open_holds)
        for record in open_holds.values():  # the client died holding: its last deadline
            history.holds.append(_hold(record, record["deadline"], "unfinished"))
    return history


def add(history: History, record: dict[str, Any], open_holds: dict) -> None:
    """One client record into ``history`` (``open_holds``: that client's holds so far)."""
    op = record["op"]
    key = (record.get("client"), record.get("election"), record.get("token"))
    if op == "hold":
        open_holds[key] = record
        history.requests["campaign"]["ok"] += 1
    elif op == "tick":
        if key in open_holds:
            open_holds[key]["deadline"] = record["deadline"]
    elif op == "end":
        begun = open_holds.pop(key, None)
        if begun is not None:
            end = min(record["at"], record["deadline"])
            history.holds.append(_hold(begun, end, record["how"]))
    elif op == "read":
        if "error" in record:
            history.requests["read"]["error"] += 1
        else:
            history.requests["read"]["ok"] += 1
            history.reads.append(
                Read(
                    record["client"],
                    record["election"],
                    record["sent"],
                    record["received"],
                    record["token"],
                )
            )
    elif op == "release":
        if "error" in record:
            history.requests["release"]["error"] += 1
        else:
            history.requests["release"]["ok"] += 1
            if record["released"]:
                history.releases.append(
                    Release(
                        record["client"], record["election"], record["token"], record["received"]
                    )
                )
    elif op == "campaign-error":
        history.requests["campaign"]["error"] += 1
    elif op == "campaign-gave-up":
        history.requests["campaign"]["gave-up"] += 1


def _hold(begun: dict[str, Any], end: float, how: str) -> Hold:
    return Hold(begun["client"], begun["election"], begun["token"], begun["start"], end, how)


def check(history: History) -> list[Violation]:
    """Every violation of the promise in ``history``."""
    violations: list[Violation] = []
    holds: dict[str, list[Hold]] = defaultdict(list)
    for hold in history.holds:
        # A body that began after its deadline (its client was paused after the
        # first heartbeat) never believed: it held nothing.
        if hold.end > hold.start:
            holds[hold.election].append(hold)
    for election, these in holds.items():
        these.sort(key=lambda h: h.start)
        violations += _overlaps(election, these)
        violations += _token_order(election, these)
    reads: dict[str, list[Read]] = defaultdict(list)
    for read in history.reads:
        reads[read.election].append(read)
    releases: dict[str, list[Release]] = defaultdict(list)
    for release in history.releases:
        releases[release.election].append(release)
    for election, these in reads.items():
        violations += _reads(election, these, holds.get(election, []), releases.get(election, []))
    return violations


def _overlaps(election: str, holds: list[Hold]) -> list[Violation]:
    found = []
    latest: Hold | None = None  # of the holds so far, the one that ends last
    for hold in holds:
        if latest is not None and hold.start < latest.end:
            found.append(
                Violation(
                    "overlap",
                    election,
                    f"{hold.client} held it (token {hold.token}) from {hold.start:.3f} while "
                    f"{latest.client} (token {latest.token}) believed it until "
                    f"{latest.end:.3f}, {latest.end - hold.start:.3f} s longer ({latest.how})",
                )
            )
        if latest is None or hold.end > latest.end:
            latest = hold
    return found


def _token_order(election: str, holds: list[Hold]) -> list[Violation]:
    return [
        Violation(
            "token-order",
            election,
            f"{later.client} was given token {later.token} at {later.start:.3f}, after "
            f"{earlier.client} was given {earlier.token} at {earlier.start:.3f}",
        )
        for earlier, later in zip(holds, holds[1:], strict=False)
        if later.token < earlier.token
        or (later.token == earlier.token and later.client != earlier.client)
    ]


def _reads(
    election: str, reads: list[Read], holds: list[Hold], releases: list[Release]
) -> list[Violation]:
    found = []
    for read in reads:
        newer = [h for h in holds if h.start < read.sent and h.token > read.token]
        if read.token and newer:
            hold = max(newer, key=lambda h: h.token)
            found.append(
                Violation(
                    "stale-read",
                    election,
                    f"a read sent at {read.sent:.3f} by {read.client} answered token "
                    f"{read.token}, but token {hold.token} had been granted to "
                    f"{hold.client} by {hold.start:.3f}",
                )
            )
            continue
        spanning = [h for h in holds if h.start <= read.sent and read.received <= h.end]
        if spanning and spanning[0].token != read.token:
            hold = spanning[0]
            found.append(
                Violation(
                    "stale-read",
                    election,
                    f"a read by {read.client} from {read.sent:.3f} to {read.received:.3f} "
                    f"answered {read.token or 'nobody'}, while {hold.client} held token "
                    f"{hold.token} throughout",
                )
            )
            continue
        for release in releases:
            if release.token == read.token and release.received < read.sent:
                found.append(
                    Violation(
                        "released-read",
                        election,
                        f"a read sent at {read.sent:.3f} answered token {read.token}, which "
                        f"{release.client} had released by {release.received:.3f}",
                    )
                )
                break
    return found


def as_json(violations: list[Violation]) -> list[dict[str, str]]:
    return [asdict(v) for v in violations]
