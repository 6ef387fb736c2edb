"""What a load-test run measured on: written next to locust's CSV files and read back by the report.

Why: a cost table prices a run by the instance type it is *tagged* with, so the report must also say
where the numbers really came from. A run on a developer box priced as ``c7g.xlarge`` is labelled as
such instead of passing for a measurement on that instance.
"""
from __future__ import annotations

import ipaddress
import json
import os
import platform
import socket
from pathlib import Path

import psutil
from pydantic import BaseModel

META_SUFFIX = "_run.json"
DMI = Path("/sys/devices/virtual/dmi/id")


class Machine(BaseModel):
    hostname: str
    arch: str
    cpu_model: str
    cpus: int
    memory_gib: float
    ec2_instance_type: str | None  # from DMI; None when this is not an EC2 instance

    @property
    def label(self) -> str:
        hardware = f"{self.cpu_model}, {self.cpus} CPUs, {self.memory_gib:.0f} GiB"
        if self.ec2_instance_type:
            return f"EC2 {self.ec2_instance_type} ({hardware})"
        return f"{self.hostname}: not an AWS EC2 instance ({hardware})"


class RunMeta(BaseModel):
    locustfile: str
    host: str
    users: int | None
    spawn_rate: float | None
    run_time_s: int | None
    workers: int
    options: dict  # the locustfile's own options (mix, zipf-s, rps-per-user, ...)
    machine: Machine  # where locust (the master) ran

    @property
    def server_is_local(self) -> bool:
        return is_loopback(self.host)

    @property
    def measured_on(self) -> str:
        if self.server_is_local:
            return f"{self.machine.label}; client and server share it"
        return f"server {self.host}, load from {self.machine.label}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine() -> Machine:
    """This machine; EC2 Nitro instances name their type in DMI, so no metadata-service call is needed."""
    vendor = _read(DMI / "sys_vendor")
    instance = _read(DMI / "product_name") if vendor == "Amazon EC2" else ""
    return Machine(hostname=socket.gethostname(), arch=platform.machine(), cpu_model=_cpu_model(),
                   cpus=os.cpu_count() or 0, memory_gib=psutil.virtual_memory().total / 2**30,
                   ec2_instance_type=instance or None)


def is_loopback(host: str) -> bool:
    name = host.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def meta_path(csv_prefix: str | Path) -> Path:
    return Path(f"{csv_prefix}{META_SUFFIX}")


def write_meta(csv_prefix: str | Path, meta: RunMeta) -> Path:
    path = meta_path(csv_prefix)
    path.write_text(json.dumps(meta.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")
    return path


def read_meta_for(stats_csv: Path) -> RunMeta | None:
    """The metadata of a ``PREFIX_stats.csv``, when the run wrote one."""
    prefix = str(stats_csv).removesuffix("_stats.csv")
    path = meta_path(prefix)
    return RunMeta.model_validate_json(path.read_text()) if path.exists() else None
