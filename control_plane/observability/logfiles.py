"""`fleet logs`: the local stack's logs (control plane, tritonservers, SeaweedFS) merged in time order.

Each process writes its own file under .fleet/ (see fleet/stack.py); a line's time comes from the
control plane's JSON ("time") or text format, or from the glog prefix Triton and SeaweedFS write
("I1130 04:12:01.123456 ..."; glog has no year and uses local time). Lines without a time (tracebacks,
continuations) keep the time of the line before them, so they stay with it.
"""
from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

GLOG = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})\b")
TEXT = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}),(\d{3}) ")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Line:
    time: datetime
    order: int  # position in its file: equal times keep their file order
    source: str
    text: str


def stack_log_files(state_dir: Path = Path(".fleet")) -> dict[str, Path]:
    """Where `fleet up` lets each process log, by a short source name."""
    files = {}
    if (state_dir / "control-plane.log").exists():
        files["control-plane"] = state_dir / "control-plane.log"
    for log in sorted(state_dir.glob("servers/*/tritonserver.log")):
        files[log.parent.name] = log
    for log in sorted(state_dir.glob("s3/**/weed.log")):
        files["seaweedfs"] = log
    return files


def line_time(text: str, year: int) -> datetime | None:
    if text.startswith("{"):
        try:
            value = json.loads(text).get("time")
            return datetime.fromisoformat(value).astimezone(UTC) if value else None
        except (ValueError, AttributeError, TypeError):
            return None
    match = GLOG.match(text)
    if match:
        month, day, hour, minute, second, micro = map(int, match.groups())
        try:
            return datetime(year, month, day, hour, minute, second, micro).astimezone(UTC)
        except ValueError:
            return None
    match = TEXT.match(text)
    if match:
        return datetime.fromisoformat(f"{match[1]}T{match[2]}.{match[3]}").astimezone(UTC)
    return None


def read_lines(source: str, path: Path, start: int = 0) -> Iterator[Line]:
    """A file's lines with their times. Lines before the first timed one take its time; a file with no
    times at all (SeaweedFS's `weed mini` writes none) is placed at its last write."""
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    with open(path, errors="replace") as handle:
        numbered = [(n, raw.rstrip("\n")) for n, raw in enumerate(handle) if n >= start and raw.strip()]
    times = [line_time(text, modified.year) for _, text in numbered]
    last = next((t for t in times if t is not None), modified)
    for (number, text), when in zip(numbered, times, strict=True):
        last = when or last
        yield Line(last, number, source, text)


def merged(files: dict[str, Path]) -> Iterator[Line]:
    """All lines of all files, oldest first (each file is in time order already; heapq merges them)."""
    return heapq.merge(*(read_lines(source, path) for source, path in files.items()))


def render(line: Line, raw: bool = False, width: int = 14) -> str:
    """One line for people: time, source, and for JSON lines level, logger, message and context fields."""
    text = line.text
    if not raw and text.startswith("{"):
        try:
            entry = json.loads(text)
            rest = {k: v for k, v in entry.items() if k not in ("time", "level", "logger", "message")}
            text = f"{entry.get('level', '')} {entry.get('logger', '')}: {entry.get('message', '')}" + "".join(
                f" {k}={v}" for k, v in rest.items() if k != "exception")
            if "exception" in entry:
                text += "\n" + entry["exception"]
        except ValueError:
            pass
    stamp = line.time.strftime("%H:%M:%S.%f")[:-3] if line.time != EPOCH else "--:--:--.---"
    return f"{stamp} {line.source:<{width}} {text}"


def tail(lines: Iterable[Line], count: int | None) -> list[Line]:
    kept = list(lines)
    return kept[-count:] if count else kept
