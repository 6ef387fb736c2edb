"""Start the pod of a rendered workload (StatefulSet, Deployment) as podman containers, as the kubelet would.

Taken from the manifest, unchanged: command/args (Kubernetes `command` replaces the image's ENTRYPOINT,
`args` its CMD) with `$(VAR)` expansion, env (values, ConfigMap and Secret references), volume mounts
(emptyDir as a host folder, subPath, readOnly), securityContext (runAsUser/runAsGroup,
readOnlyRootFilesystem), init containers run to completion in order, native sidecars (init containers
with restartPolicy Always) started and left running, then the containers; readiness probes (httpGet)
are checked from the host. What stands in for the cluster: a network container shares the pod's
network namespace (host loopback at 10.0.2.2), IRSA credentials and the S3 endpoint come as environment
variables, a memory-medium emptyDir at /dev/shm becomes the container's shm size.
"""
from __future__ import annotations

import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from deploy.images import version
from deploy.podman import Container, podman, run_detached

Manifest = dict[str, Any]
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def local_image(image: str) -> str:
    """triton-fleet/server-cpu (any registry or tag) -> the image built here."""
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"localhost/triton-fleet/{name.rsplit('/', 1)[-1]}:{version()}"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, unknown ones stay as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def _quantity_mib(quantity: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(int(quantity) / 2**20)


@dataclass
class PodRun:
    """One pod: `start()` runs it like the kubelet; `stop()` removes every container."""

    workload: Manifest
    objects: list[Manifest]  # the rest of the rendering: ConfigMaps and Secrets it refers to
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)  # (secret, key) -> value
    config_overrides: dict[tuple[str, str], str] = field(default_factory=dict)
    platform_env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"pod-{uuid.uuid4().hex[:8]}")
    volume_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pod-")))
    started: dict[str, Container] = field(default_factory=dict, init=False)
    network: Container | None = field(default=None, init=False)
    ports: dict[int, int] = field(default_factory=dict, init=False)

    @property
    def pod_name(self) -> str:
        """metadata.name of the pod: a StatefulSet's first pod is <name>-0."""
        return f"{self.workload['metadata']['name']}-0"

    @property
    def namespace(self) -> str:
        """metadata.namespace of the pod: the workload's own, as the rendering sets it."""
        return self.workload["metadata"].get("namespace", "default")

    @property
    def spec(self) -> Manifest:
        return self.workload["spec"]["template"]["spec"]

    def _config(self, name: str, key: str) -> str:
        if (name, key) in self.config_overrides:
            return self.config_overrides[(name, key)]
        for obj in self.objects:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == name:
                return obj["data"][key]
        raise KeyError(f"ConfigMap {name} (key {key}) is not in the rendering")

    def _env(self, container: Manifest) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            else:
                source = item["valueFrom"]
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    env[item["name"]] = self._config(ref["name"], ref["key"])
                elif "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    env[item["name"]] = self.secrets[(ref["name"], ref["key"])]
                elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    env[item["name"]] = self.pod_name
                elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                    env[item["name"]] = self.namespace
                else:
                    raise KeyError(f"env {item['name']}: valueFrom {source} is not emulated here")
        return env

    def _volume_dir(self, name: str) -> Path:
        path = self.volume_root / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        return path

    def start_network(self, image: str) -> None:
        ports = sorted({p["containerPort"] for c in self.spec["containers"] for p in c.get("ports", [])})
        extra = ["--network", "slirp4netns:allow_host_loopback=true"]
        for port in ports:
            extra += ["-p", f"127.0.0.1::{port}"]
        self.network = run_detached(image, f"{self.name}-net", ["infinity"], entrypoint=["sleep"], extra=extra)
        for port in ports:
            self.ports[port] = int(podman("port", self.network.name, str(port)).stdout.strip().rsplit(":", 1)[1])

    def run_container(self, container: Manifest) -> Container:
        env = self._env(container)
        pod_security = self.spec.get("securityContext", {})
        security = {**pod_security, **container.get("securityContext", {})}
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts, extra = [], ["--network", f"container:{self.network.name}"]
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {"name": mount["name"], "emptyDir": {}})  # claim templates
            if volume.get("emptyDir", {}).get("medium") == "Memory" and mount["mountPath"] == "/dev/shm":
                extra += ["--shm-size", f"{_quantity_mib(volume['emptyDir'].get('sizeLimit', '64Mi'))}m"]
                continue
            host = self._volume_dir(mount["name"])
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)
            mounts.append(f"{host}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else ""))
        if "runAsUser" in security:
            extra += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        if security.get("readOnlyRootFilesystem"):
            extra += ["--read-only"]
        env_all = {**env, **self.platform_env}
        command = [expand(a, env_all) for a in container.get("command", [])]
        args = [expand(a, env_all) for a in container.get("args", [])]
        started = run_detached(local_image(container["image"]), f"{self.name}-{container['name']}",
                               command[1:] + args if command else args,
                               entrypoint=command[:1] if command else None, env=env_all, mounts=mounts,
                               extra=extra)
        self.started[container["name"]] = started
        return started

    def start(self, init_timeout_s: float = 180) -> PodRun:
        """Init containers in order (each to exit 0; sidecars left running), then the containers."""
        self.start_network(local_image(self.spec["containers"][0]["image"]))
        for container in self.spec.get("initContainers", []):
            started = self.run_container(container)
            if container.get("restartPolicy") == "Always":
                continue  # a native sidecar: runs beside the containers
            code = started.wait_exit(init_timeout_s)
            if code != 0:
                raise RuntimeError(f"init container {container['name']} exited {code}:\n{started.logs()[-3000:]}")
        for container in self.spec["containers"]:
            self.run_container(container)
        return self

    def probe_ok(self, container: str, kind: str = "readinessProbe") -> bool:
        """The probe as the kubelet sends it (httpGet on the pod's port), from the host."""
        definition = next(c for c in self.spec["containers"] if c["name"] == container)
        probe = definition[kind]["httpGet"]
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in definition["ports"] if p["name"] == port)
        try:
            return requests.get(f"http://127.0.0.1:{self.ports[port]}{probe['path']}", timeout=3).ok
        except requests.ConnectionError:
            return False

    def wait_probe(self, container: str, timeout_s: float, kind: str = "readinessProbe") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.probe_ok(container, kind):
                return
            if self.started[container].exit_code() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{container} {kind} not passing after {timeout_s:.0f}s; logs:\n"
                             f"{self.started[container].logs()[-3000:]}")

    def stop(self) -> None:
        for container in reversed(list(self.started.values())):
            container.remove()
        if self.network is not None:
            self.network.remove(grace_s=0)  # `sleep` as PID 1 ignores SIGTERM
