"""Fuzz the sidecar on loopback: schemathesis over the served OpenAPI, then hand-written malformed requests.

The stand-in ComfyUI and the sidecar run as separate processes on 127.0.0.1. Outbound calls the fuzzer may
provoke (webhooks, downloads, uploads) go nowhere: one attempt each, short timeouts, the Hugging Face
endpoint on a closed loopback port. Prints: requests, status codes, 5xx (target 0), hangs, the sidecar's RSS
(before, peak, after) and open file descriptors (before, after).

    python bench/fuzz_sidecar.py                 # ~3-4 minutes
    python bench/fuzz_sidecar.py --quick         # ~1 minute
Needs the `fuzz` extra (schemathesis) and psutil (`test` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


@contextlib.contextmanager
def processes(work: Path) -> Iterator[tuple[str, psutil.Process]]:
    comfy_port, port = free_port(), free_port()
    standin = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyui_standin",
            "--port",
            str(comfy_port),
            "--base-directory",
            str(work / "comfy"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "HOST": HOST,
        "PORT": str(port),
        "SIDECAR_MODE": "attach",
        "COMFYUI_URL": f"http://{HOST}:{comfy_port}",
        "COMFY_HOME": str(work / "comfy"),
        "TEMP_DIR": str(work / "comfy" / "temp"),
        "CACHE_DIR": str(work / "cache"),
        "LOG_LEVEL": "warning",
        "PROMPT_TIMEOUT_S": "20",
        "PROMPT_WEBHOOK_RETRIES": "1",
        "WEBHOOK_TIMEOUT_S": "1",
        "DOWNLOAD_ATTEMPTS": "1",
        "DOWNLOAD_CONNECT_TIMEOUT_SECONDS": "2",
        "DOWNLOAD_READ_TIMEOUT_SECONDS": "2",
        "HF_ENDPOINT": f"http://{HOST}:9",
        "HTTP_IDLE_TIMEOUT_S": "5",
        "BODY_READ_TIMEOUT_S": "5",
    }
    env.pop("CMD", None)
    log = (work / "sidecar.log").open("w")
    sidecar = subprocess.Popen([sys.executable, "-m", "comfyui_sidecar"], env=env, stdout=log, stderr=log)
    url = f"http://{HOST}:{port}"
    try:
        wait_http(f"{url}/ready")
        yield url, psutil.Process(sidecar.pid)
    finally:
        for process in (sidecar, standin):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            if process.poll() is None:
                process.kill()
        log.close()


class RssSampler(threading.Thread):
    """The sidecar's peak RSS, sampled every 50 ms."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)


def schemathesis_run(url: str, work: Path, max_examples: int, max_time: int) -> collections.Counter[str]:
    har = work / "fuzz.har"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/docs/json",
        "--url",
        url,
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_time),
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--seed",
        "1",
        "--exclude-path",
        "/drain",  # the preStop hook: it puts the sidecar into shutdown (503 for new prompts, by design)
        "--suppress-health-check",
        "all",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--no-color",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_time + 120, check=False)
    (work / "schemathesis.txt").write_text(result.stdout + result.stderr)
    codes: collections.Counter[str] = collections.Counter()
    if har.exists():
        for entry in json.loads(har.read_text())["log"]["entries"]:
            status = entry["response"]["status"]
            codes[str(status) if status else "no answer"] += 1
    seconds = time.monotonic() - started
    print(f"schemathesis: {sum(codes.values())} requests in {seconds:.0f} s (exit {result.returncode})")
    return codes


# ---- hand-written malformed requests ---------------------------------------------------------------------
def request(path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    fields = {
        "Host": "fuzz",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


def big_prompt(nodes: int) -> bytes:
    prompt = {
        str(i): {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "color": i}}
        for i in range(nodes)
    }
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["0", 0], "filename_prefix": "x"}}
    return json.dumps({"prompt": prompt}).encode()


def cases() -> list[tuple[str, bytes, str]]:
    """(name, bytes to send, how): 'send' the whole request; 'abort' after sending, mid-body; 'idle' send it
    and then nothing, expecting the server to close the connection."""
    good = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}}
    out: list[tuple[str, bytes, str]] = []
    for path in ("/prompt", "/interrupt", "/download"):
        out += [
            (f"{path} nested 1000", request(path, b"[" * 1000 + b"]" * 1000), "send"),
            (
                f"{path} nested 100000",
                request(path, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                "send",
            ),
            (
                f"{path} 5000-digit int",
                request(path, b'{"id": ' + b"7" * 5000 + b', "url": 1, "model_type": 2}'),
                "send",
            ),
            (
                f"{path} surrogate",
                request(path, b'{"id": "\\ud800", "url": "http://x/\\udfff", "model_type": "loras"}'),
                "send",
            ),
            (
                f"{path} charset bogus",
                request(path, b"{}", {"Content-Type": 'application/json; charset="bogus"'}),
                "send",
            ),
            (f"{path} deflate junk", request(path, b'{"id": "x"}', {"Content-Encoding": "deflate"}), "send"),
            (
                f"{path} gzip bomb",
                request(
                    path,
                    gzip.compress(b'{"id": "' + b"a" * 120_000_000 + b'"}'),
                    {"Content-Encoding": "gzip"},
                ),
                "send",
            ),
            (f"{path} NaN", request(path, b'{"id": NaN}'), "send"),
            (f"{path} invalid utf-8", request(path, b'{"id": "\xff\xfe"}'), "send"),
            (f"{path} not json", request(path, b"<xml/>"), "send"),
            (f"{path} abort mid-body", request(path, b"{" + b" " * 10)[:-5], "abort"),
        ]
    crlf = {
        "url_pattern": "**",
        "auth": {"type": "header", "header_name": "X-A\r\nB", "header_value": "v\r\nC: d"},
    }
    out += [
        (
            "/prompt CR/LF auth",
            request("/prompt", json.dumps({**good, "credentials": [crlf]}).encode()),
            "send",
        ),
        (
            "/download CR/LF auth",
            request(
                "/download",
                json.dumps({"url": "https://h/x", "model_type": "loras", "auth": crlf["auth"]}).encode(),
            ),
            "send",
        ),
        ("/prompt 100000 nodes", request("/prompt", big_prompt(100_000)), "send"),
        (
            "/prompt many values",
            request("/prompt", b'{"prompt": {}, "x": [' + b"0," * 3_000_000 + b"0]}"),
            "send",
        ),
        ("/prompt no output node", request("/prompt", json.dumps(good).encode()), "send"),
        (
            "/prompt 2^70 seed",
            request(
                "/prompt",
                b'{"prompt": {"1": {"class_type": "KSampler", "inputs": {"seed": 1180591620717411303424}}}}',
            ),
            "send",
        ),
        ("idle connection", b"", "idle"),
        ("headers never finish", b"GET /health HTTP/1.1\r\nHost: fuzz\r\n", "idle"),
        ("body never finishes", request("/prompt", b"{" + b" " * 100)[:-50], "idle"),
        ("unknown route", request("/nope", b"{}"), "send"),
        ("bad method", request("/prompt", b"", method="DELETE"), "send"),
    ]
    return out


async def run_case(port: int, payload: bytes, how: str, timeout_s: float) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout_s)
    except (OSError, TimeoutError):
        return "connect failed"
    try:
        writer.write(payload)
        await writer.drain()
        if how == "abort":
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return "aborted"
        if how == "idle":
            data = await asyncio.wait_for(reader.read(), timeout_s)
            return "closed" if not data else data.split(b" ", 2)[1].decode()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        return line.split(b" ", 2)[1].decode() if line else "closed"
    except TimeoutError:
        return "hang"
    except (OSError, IndexError):
        return "reset"
    finally:
        writer.close()


async def malformed(url: str, rounds: int) -> collections.Counter[str]:
    port = int(url.rsplit(":", 1)[1])
    codes: collections.Counter[str] = collections.Counter()
    planned = cases()
    for _ in range(rounds):
        for name, payload, how in planned:
            result = await run_case(port, payload, how, timeout_s=30)
            codes[result] += 1
            if result.startswith("5") or result in ("hang", "connect failed"):
                print(f"  {name}: {result}")
    return codes


def metrics_5xx(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("comfyui_api_requests_total{") and 'code="5' in line and "/ready" not in line:
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, HAR)")
    args = parser.parse_args()
    max_examples, max_time, rounds = (20, 40, 1) if args.quick else (100, 150, 3)
    work = Path(tempfile.mkdtemp(prefix="sidecar-fuzz-"))
    try:
        with processes(work) as (url, process):
            time.sleep(1)
            rss_before, fds_before = process.memory_info().rss, process.num_fds()
            sampler = RssSampler(process)
            sampler.start()
            fuzz_codes = schemathesis_run(url, work, max_examples, max_time)
            started = time.monotonic()
            hand_codes = asyncio.run(malformed(url, rounds))
            print(f"malformed: {sum(hand_codes.values())} requests in {time.monotonic() - started:.0f} s")
            time.sleep(3)
            sampler.stop.set()
            rss_after, fds_after = process.memory_info().rss, process.num_fds()
            server_errors = metrics_5xx(url)
            alive = process.is_running()
        print(f"schemathesis status codes: {dict(sorted(fuzz_codes.items()))}")
        print(f"malformed status codes:    {dict(sorted(hand_codes.items()))}")
        fives = sum(n for code, n in (fuzz_codes + hand_codes).items() if code.startswith("5"))
        hangs = (fuzz_codes + hand_codes)["hang"] + fuzz_codes["no answer"]
        print(f"5xx answers: {fives}; 5xx in the sidecar's metrics: {server_errors or 0}; hangs: {hangs}")
        mib = 1024 * 1024
        print(
            f"sidecar RSS: before {rss_before / mib:.1f} MiB, peak {sampler.peak / mib:.1f} MiB, "
            f"after {rss_after / mib:.1f} MiB; fds: before {fds_before}, after {fds_after}; alive: {alive}"
        )
        tracebacks = (work / "sidecar.log").read_text().count("Traceback")
        print(f"tracebacks in the sidecar log: {tracebacks}")
        return 0 if fives == 0 and hangs == 0 and not server_errors else 1
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
