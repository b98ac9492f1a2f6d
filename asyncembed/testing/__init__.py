"""Test helpers: a local OpenRouter-compatible embeddings server with fault injection.

``LocalServer`` serves deterministic vectors (:func:`expected_vector`) on 127.0.0.1,
with latency, rate limits and scripted or random faults, for your own tests too::

    from asyncembed.testing import LocalServer

    async with LocalServer(dimensions=8, script=["429", "ok"]) as server:
        ...  # point the client at server.base_url
"""

from ._clock import FakeClock as FakeClock
from ._clock import no_backoff as no_backoff
from ._clock import wait_until as wait_until
from ._faults import Fault as Fault
from ._faults import FaultKind as FaultKind
from ._faults import Faults as Faults
from ._faults import FaultSpec as FaultSpec
from ._mock import MockTransport as MockTransport
from ._mock import json_response as json_response
from ._serve import add_serve_arguments as add_serve_arguments
from ._serve import run_serve as run_serve
from ._serve import serve_main as serve_main
from ._server import LocalServer as LocalServer
from ._server import RequestRecord as RequestRecord
from ._server import ServerStats as ServerStats
from ._vectors import expected_vector as expected_vector

__all__ = [
    "FakeClock",
    "Fault",
    "FaultKind",
    "FaultSpec",
    "Faults",
    "LocalServer",
    "MockTransport",
    "RequestRecord",
    "ServerStats",
    "add_serve_arguments",
    "expected_vector",
    "json_response",
    "no_backoff",
    "run_serve",
    "serve_main",
    "wait_until",
]
