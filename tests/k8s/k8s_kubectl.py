"""A small typed wrapper around the pinned kubectl and helm binaries, always with an explicit kubeconfig."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
Manifest = dict[str, Any]


class CommandFailed(AssertionError):
    """A kubectl/helm call that exited non-zero; the message carries the command and its stderr."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        shown = " ".join(args)
        detail = result.stderr.strip() or result.stdout.strip()
        super().__init__(f"`{shown}` exited {result.returncode}:\n{detail}")


def run_tool(
    args: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a command with a time bound; raises CommandFailed on a non-zero exit when check is set."""
    result = subprocess.run(
        list(args), input=input_text, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and result.returncode != 0:
        raise CommandFailed(args, result)
    return result


def dump_manifests(manifests: Sequence[Manifest]) -> str:
    return yaml.safe_dump_all(list(manifests), sort_keys=False)


def wait_for(
    condition: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    """Polls `condition` until it returns something truthy, at most `timeout` seconds; returns that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to one kubeconfig (and optionally an identity to impersonate)."""

    binary: Path
    kubeconfig: Path
    as_user: str | None = None

    def base(self) -> list[str]:
        cmd = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        if self.as_user:
            cmd.append(f"--as={self.as_user}")
        return cmd

    def run(
        self, *args: str, input_text: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([*self.base(), *args], input_text=input_text, timeout=timeout, check=check)

    def out(self, *args: str, timeout: float = 120) -> str:
        return self.run(*args, timeout=timeout).stdout

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.out(*args, "-o", "json", timeout=timeout))

    def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        """The object, or None when it does not exist."""
        ns = ["-n", namespace] if namespace else []
        result = self.run("get", kind, name, *ns, "-o", "json", "--ignore-not-found", check=False)
        if result.returncode != 0:
            raise CommandFailed(["kubectl", "get", kind, name, *ns], result)
        text = result.stdout.strip()
        return json.loads(text) if text else None

    def items(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[Manifest]:
        args = ["get", kind, "-o", "json"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if selector:
            args += ["-l", selector]
        items: list[Manifest] = json.loads(self.out(*args))["items"]
        return items

    def apply(
        self,
        manifests: Sequence[Manifest],
        namespace: str | None = None,
        *,
        server_side: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        if server_side:
            args += ["--server-side", "--field-manager=k8s-tier-test"]
        return self.run(*args, input_text=dump_manifests(manifests), check=check)

    def apply_file(
        self, path: Path, namespace: str | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = ["apply", "-f", str(path)]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, check=check)

    def raw(self, path: str) -> str:
        return self.out("get", "--raw", path)


@dataclass(frozen=True)
class Helm:
    """helm bound to one kubeconfig."""

    binary: Path
    kubeconfig: Path

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        args_ = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        return run_tool(args_, timeout=timeout, check=check)
