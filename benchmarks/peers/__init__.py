"""Peer scripts: each runs as its own process and prints one JSON line.

Run as ``python -m benchmarks.peers.<peer> '<json config>'`` from the repository root.
"""
