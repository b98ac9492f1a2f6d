"""Decode: asyncembed's msgspec path vs stdlib json, orjson, pydantic and the openai client."""

from __future__ import annotations

from benchmarks.runner import BenchResult, Options, Peer, Table, fmt, ratio

NAME = "decode"
TITLE = "Decoding responses: µs per embedding"
LIBS = [
    ("asyncembed (msgspec, `decode_response`)", "asyncembed"),
    ("stdlib json + numpy", "json"),
    ("orjson + numpy", "orjson"),
    ("pydantic model + numpy", "pydantic"),
    ("openai client's own parsing", "openai"),
]


def run(opts: Options) -> BenchResult:
    """Each library in its own process decodes the same bodies; min of N rounds."""
    n = opts.size(256, 32)
    dims = [384, 1536, 3072] if not opts.quick else [384]
    rounds = opts.size(10, 2)
    encodings = ["float", "base64"]
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"One response body of {n} embeddings, decoded in-process into what each "
            "library's user gets, per embedding: a float32 `(n, d)` matrix (json, orjson and "
            "pydantic decode, then `base64.b64decode` + `np.frombuffer` or `np.array`); "
            "the openai client's parsing (`response.json()`, `construct_type` into "
            "`CreateEmbeddingResponse`, and its default base64 post-parser, which yields "
            f"`list[float]`). Min of {rounds} rounds after a warm-up, each library in its own "
            "process. Baseline: stdlib json."
        ),
    )
    peers = [
        Peer(
            label,
            "decode",
            {"lib": lib, "n": n, "dims": dims, "encodings": encodings, "rounds": rounds},
        ).run()
        for label, lib in LIBS
    ]
    result.raw = {p.label: p.line or {"error": p.error} for p in peers}
    baseline = peers[1].line
    for encoding in encodings:
        columns = ["library"]
        for d in dims:
            columns += [f"{d}-d µs", "vs json"]
        table = Table(title=f"{encoding}, µs per embedding ({n} per body)", columns=columns)
        for peer in peers:
            if peer.line is None:
                table.rows.append(
                    [peer.label, f"failed: {peer.error}"] + [""] * (2 * len(dims) - 1)
                )
                continue
            row = [peer.label]
            for d in dims:
                key = f"{encoding}-{d}"
                value = peer.line["results"][key]
                row += [fmt(value), ratio(value, baseline["results"][key] if baseline else None)]
            table.rows.append(row)
        result.tables.append(table)
    if peers[0].line:
        sizes = peers[0].line["body_bytes"]
        result.notes.append(
            "Body sizes: " + ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in sizes.items()) + "."
        )
    result.notes += [
        "asyncembed's figure includes every check the client makes (index coverage, "
        "equal lengths, finite values).",
        "Float bodies print 10 decimals per value, as OpenAI's API does.",
        "`vs json` is a time ratio: lower is faster (0.25x = 4x as fast as stdlib json).",
    ]
    return result
