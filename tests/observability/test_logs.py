"""JSON log lines carry the request, model, pack and server; `fleet logs` merges files by time."""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime

from click.testing import CliRunner

from control_plane.observability import logs
from control_plane.observability.cli import logs_command
from control_plane.observability.logfiles import merged, stack_log_files


def record(message: str, **extra) -> logging.LogRecord:
    made = logging.LogRecord("control_plane.test", logging.WARNING, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_line_is_one_json_object_with_the_bound_context_and_the_call_extras():
    with logs.log_context(request_id="r-1", model="m-7"):
        line = json.loads(logs.JsonFormatter().format(record("pack %s failed", pack="p-2", server="triton-a")))
    assert line["request_id"] == "r-1" and line["model"] == "m-7"
    assert line["pack"] == "p-2" and line["server"] == "triton-a"
    assert line["level"] == "WARNING" and line["logger"] == "control_plane.test"
    assert datetime.fromisoformat(line["time"]).tzinfo is not None
    assert "request_id" not in json.loads(logs.JsonFormatter().format(record("outside"))), "context ends"


def test_an_exception_is_kept_in_the_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = json.loads(logs.JsonFormatter().format(
            logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())))
    assert "ValueError: boom" in line["exception"]


def test_audit_entries_name_what_they_are_about():
    assert logs.audit_fields("pack.load", "pack-1", {"server": "triton-b"}) == {"pack": "pack-1", "server": "triton-b"}
    assert logs.audit_fields("model.register", "m-1", {"pack": "pack-1"}) == {"model": "m-1", "pack": "pack-1"}
    assert logs.audit_fields("server.dead", "triton-a", None) == {"server": "triton-a"}


def _stack_dir(tmp_path):
    (tmp_path / "servers" / "triton-a").mkdir(parents=True)
    (tmp_path / "s3").mkdir()
    year = datetime.now(UTC).year
    (tmp_path / "control-plane.log").write_text(
        f"{year}-11-30 10:00:00,500 INFO fleet: starting\n"
        + json.dumps({"time": f"{year}-11-30T10:00:02.000+00:00", "level": "INFO", "logger": "cp",
                      "message": "GET /x -> 200", "request_id": "rid-9"}) + "\n"
        + json.dumps({"time": f"{year}-11-30T10:00:04.000+00:00", "level": "ERROR", "logger": "cp",
                      "message": "sync failed", "server": "triton-a"}) + "\n"
        + "Traceback (most recent call last):\n")
    (tmp_path / "servers" / "triton-a" / "tritonserver.log").write_text(
        'I1130 10:00:01.000000 1 server.cc:1] "started"\nE1130 10:00:03.000000 1 model.cc:2] "load failed"\n')
    weed = tmp_path / "s3" / "weed.log"
    weed.write_text("  Starting SeaweedFS Mini ...\n")
    stamp = datetime(year, 11, 30, 10, 0, 5, tzinfo=UTC).timestamp()
    os.utime(weed, (stamp, stamp))
    return tmp_path


def test_lines_of_every_process_are_merged_in_time_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        files = stack_log_files(_stack_dir(tmp_path))
        assert set(files) == {"control-plane", "triton-a", "seaweedfs"}
        order = [(line.source, line.text.split()[-1]) for line in merged(files)]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert [source for source, _ in order] == ["control-plane", "triton-a", "control-plane", "triton-a",
                                                "control-plane", "control-plane", "seaweedfs"]
    assert order[-2] == ("control-plane", "last):"), "a traceback stays after the line it belongs to"


def test_fleet_logs_filters_by_source_and_text_and_says_when_there_is_nothing(tmp_path):
    runner = CliRunner()
    stack = _stack_dir(tmp_path / "stack")
    result = runner.invoke(logs_command, ["--dir", str(stack), "--grep", "rid-9"])
    assert result.exit_code == 0 and "GET /x -> 200" in result.output and "request_id=rid-9" in result.output
    only = runner.invoke(logs_command, ["--dir", str(stack), "--source", "triton-a", "-n", "1"])
    assert only.output.count("\n") == 1 and "load failed" in only.output
    unknown = runner.invoke(logs_command, ["--dir", str(stack), "--source", "nope"])
    assert unknown.exit_code != 0 and "known: control-plane" in unknown.output
    empty = runner.invoke(logs_command, ["--dir", str(tmp_path / "none")])
    assert empty.exit_code != 0 and "fleet up" in empty.output
