"""The Dockerfile, read statically (no docker here): the stages, user, paths and ports the
chart relies on."""

from __future__ import annotations

import json
import re

import pytest

from chartlib import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text()
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1]) for l in lines]


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            result.append([])
        result[-1].append((instruction, args))
    return result


def last(stage, instruction) -> str:
    return [args for inst, args in stage if inst == instruction][-1]


def test_two_stages_builder_and_slim_runtime(stages):
    assert len(stages) == 2
    assert last(stages[0], "FROM") == "rust:1-bookworm AS builder"
    assert last(stages[1], "FROM") == "debian:12-slim"


def test_builder_builds_the_locked_release_binary(stages):
    runs = " ".join(args for inst, args in stages[0] if inst == "RUN")
    assert "cargo build --release --locked --bin longpoll-gateway" in runs


def test_runtime_runs_the_binary_as_uid_10001(stages):
    runtime = stages[1]
    runs = " ".join(args for inst, args in runtime if inst == "RUN")
    assert re.search(r"useradd .*--uid 10001 --gid 10001", runs)
    assert "--gid 10001" in runs and "groupadd" in runs
    assert last(runtime, "USER") == "10001:10001"
    assert last(runtime, "COPY").endswith(" /usr/local/bin/longpoll-gateway")
    assert last(runtime, "COPY").startswith("--from=builder ")
    assert json.loads(last(runtime, "ENTRYPOINT")) == ["longpoll-gateway"]
    assert json.loads(last(runtime, "CMD")) == ["serve"]
    assert last(runtime, "EXPOSE").split() == ["8080", "9090"]


def test_dockerignore_keeps_the_sources(stages):
    ignored = [
        l.strip()
        for l in (ROOT / ".dockerignore").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    ]
    assert "target/" in ignored and ".git/" in ignored
    for needed in ("src", "src/", "Cargo.toml", "Cargo.lock", "assets", "assets/"):
        assert needed not in ignored
