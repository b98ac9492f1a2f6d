from __future__ import annotations

import os

import pytest

# Ray reads this once, when a test module first imports it: without it the tests' Ray
# would bind every interface instead of 127.0.0.1 (see tests/test_ray.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# ...and would report usage statistics to ray.io: no test reaches off this machine.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# (and some versions warn at init about a future default that does not concern us)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never pick up a real key or proxy from the developer's shell.
    for name in ("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
