"""Every code sample in README.md and docs/ runs here, against a local server.

Fencing convention (for whoever writes docs):

- ```` ```python ````: executed. The blocks of one page run in order in one namespace,
  so a later block may use what an earlier one defined. ``__name__`` is ``"__docs__"``:
  code under ``if __name__ == "__main__":`` is shown but not run (use it only for a line
  that would run forever, such as ``web.run_app(app)``). A block may use top-level
  ``await``; it then runs in its own ``asyncio.run()``, so an Embedder or server must not
  outlive the block that opened it. After a block runs, each ``async def test_*()`` it
  defined that takes no arguments is awaited too, so a testing guide can show real
  pytest tests.
- ```` ```py-norun ````: shown, never run (a real endpoint, a framework not installed).
  Keep these few: ``MAX_NORUN`` is enforced below.
- ```` ```console ````, ```` ```bash ````, ```` ```text ````, ```` ```yaml ````...: not run.
  Any other language tag fails the suite, so a typo cannot silently skip a sample.

The environment of a run: ``OPENROUTER_BASE_URL`` is the base URL of a
:class:`~asyncembed.testing.LocalServer` (1536-dimensional vectors, any model) serving
on 127.0.0.1 from a background thread, and ``OPENROUTER_API_KEY`` holds a dummy key
(which asyncembed sends only to openrouter.ai, so that server requires none). Samples
are thus written exactly as a user would write them for OpenRouter. Name resolution is
refused for any host other than loopback, so a sample cannot reach the network; the name
``localhost`` resolves to that LocalServer whatever port the sample names, so a sample
for a self-hosted server keeps its real default (``http://localhost:8000/v1`` for vLLM)
and still runs. The
working directory is a fresh temporary folder holding ``corpus.txt``: the first 300
lines of the shipped sample corpus.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncembed.testing import LocalServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
KEY = "sk-or-v1-docs-dummy-key"
RUN, NORUN = "python", "py-norun"
NOT_RUN = {NORUN, "console", "bash", "sh", "text", "yaml", "toml", "json", "ini", ""}
MAX_NORUN = 8
# Owned by the benchmarks engineer and the Ray helper: linked from the docs, may land after them.
OPTIONAL_PAGES = {"benchmarks.md", "ray-data.md"}

_FENCE = re.compile(r"^(```+|~~~+)\s*([^\s`]*)")


def blocks(page: Path) -> Iterator[tuple[str, int, str]]:
    """Yield ``(language, first line number, source)`` for each fenced block."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, language = match.groups()
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page.name}:{start}: unclosed code fence")
        yield language, start + 1, "\n".join(lines[start:i]) + "\n"
        i += 1


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


class ServerThread:
    """A LocalServer on its own event loop in a daemon thread, so samples may call
    ``asyncio.run()`` themselves."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = LocalServer(latency=0.0)

    def __enter__(self) -> LocalServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with ServerThread() as running:
        yield running


@pytest.fixture
def sandbox(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[LocalServer]:
    monkeypatch.setenv("OPENROUTER_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    corpus = (ROOT / "asyncembed" / "data" / "corpus.txt").read_text(encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(
        "".join(corpus.splitlines(keepends=True)[:300]), encoding="utf-8"
    )
    real = socket.getaddrinfo

    def loopback_only(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"docs samples may not reach the network (tried {name!r})")
        if name == "localhost":  # any self-hosted server's port: the LocalServer
            return real("127.0.0.1", server.port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield server


def run_block(source: str, line: int, page: Path, namespace: dict[str, Any], ran: set[str]) -> None:
    # Pad with blank lines so tracebacks point at the right line of the .md file.
    padded = "\n" * (line - 1) + source
    code = compile(padded, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(value):
            if name in ran or inspect.signature(value).parameters:
                continue
            ran.add(name)
            asyncio.run(value())


PAGES_WITH_SAMPLES = [p for p in PAGES if any(lang == RUN for lang, _, _ in blocks(p))]


@pytest.mark.parametrize("page", PAGES_WITH_SAMPLES, ids=rel)
def test_samples_run(page: Path, sandbox: LocalServer) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    ran: set[str] = set()
    for language, line, source in blocks(page):
        if language == RUN:
            run_block(source, line, page, namespace, ran)
    tests = {n for n, v in namespace.items() if n.startswith("test_") and callable(v)}
    assert tests <= ran, f"test_* samples that were not run: {sorted(tests - ran)}"


def test_code_fences_use_known_languages() -> None:
    norun = []
    for page in PAGES:
        for language, line, _ in blocks(page):
            where = f"{rel(page)}:{line}"
            assert language == RUN or language in NOT_RUN, f"{where}: unknown fence {language!r}"
            if language == NORUN:
                norun.append(where)
    assert len(norun) <= MAX_NORUN, f"too many samples that do not run: {norun}"


def test_readme_quick_start_is_the_two_make_targets() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def _nav_files(text: str) -> list[str]:
    return re.findall(r":\s*([\w/.-]+\.md)\s*$", text, re.M)


def test_mkdocs_nav_lists_every_page() -> None:
    nav = _nav_files((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    missing = [f for f in nav if f not in on_disk and f not in OPTIONAL_PAGES]
    assert not missing, f"in the nav but not in docs/: {missing}"
    assert on_disk - set(nav) == set(), "pages missing from the mkdocs nav"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() and path.name not in OPTIONAL_PAGES:
                broken.append(f"{rel(page)} -> {target}")
    assert not broken, broken
