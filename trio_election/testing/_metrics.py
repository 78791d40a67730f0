"""Scraping a node's ``/metrics`` (``--metrics-listen``) in tests."""

from __future__ import annotations

import re

import trio
from prometheus_client.parser import text_string_to_metric_families

#: The line a node logs when its metrics listener is up: its host and port.
METRICS_LINE = re.compile(r"metrics on http://(\S+):(\d+)/metrics")


class MetricSamples:
    """Every sample of one scrape, parsed by prometheus-client."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        #: Every metric family shown, samples or not, by name: its type.
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for one in family.samples:
                self.samples[one.name, frozenset(one.labels.items())] = one.value

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the sample ``name`` with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The samples called ``name``, by the values of ``labels``."""
        found = {}
        for (sample, have), value in self.samples.items():
            if sample == name:
                values = dict(have)
                found[tuple(values.get(label, "") for label in labels)] = value
        return found


async def http_get(port: int, path: str = "/metrics", host: str = "127.0.0.1") -> tuple[int, str]:
    """``GET path`` over HTTP/1.1, bounded by 10 s: the status code and the body."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            response = b""
            while data := await stream.receive_some():
                response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape_metrics(port: int, host: str = "127.0.0.1") -> MetricSamples:
    """What a node's ``/metrics`` shows now.

    Raises:
        AssertionError: it did not answer 200.
    """
    status, body = await http_get(port, host=host)
    assert status == 200, f"/metrics answered {status}: {body}"
    return MetricSamples(body)
