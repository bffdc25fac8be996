"""Every metric the chart's dashboard, alerts and the KEDA example use is one a real sidecar exports.

One run: the stand-in ComfyUI and a sidecar with its model cache (models from a local file server), two rounds
of prompts (models downloaded and loaded, cache hits, a failing prompt, a delivered and an undeliverable
webhook), `/metrics` scraped after each round. Then:
- every `comfyui_api_*` name in those files, and every literal label value they match on, is in the scrape;
- the new metrics count what docs/sidecar.md says (model loads, prompts finished by result, busy seconds);
- every dashboard and KEDA query, with the labels the chart's PodMonitor adds, returns data from the two
  scrapes (evaluated by promtool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from comfyui_sidecar.app import build_fetcher
from comfyui_sidecar.model_paths import extra_model_paths_yaml, known_folders
from comfyui_standin.models import safetensors_bytes
from comfyui_standin.testing import run_standin
from prometheus_client.parser import text_string_to_metric_families
from sidecar_harness import HOST, empty_image_prompt, run_sidecar, run_webhook_receiver, sidecar_settings
from tier import tool_path

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "helm" / "files" / "dashboards" / "comfyui-instances.json"
KEDA_EXAMPLES = sorted((REPO / "examples" / "autoscaling").glob("*.yaml"))
ALERT_TEMPLATE = REPO / "helm" / "templates" / "prometheusrule.yaml"
RULE_TESTS = [REPO / "tests" / "chart" / "rules" / "sidecar-alerts.test.yaml"]
USERS = [DASHBOARD, *KEDA_EXAMPLES, ALERT_TEMPLATE, *RULE_TESTS]

# What the chart's PodMonitor (and Prometheus) add to every scraped series; the KEDA example's instance.
TARGET = {
    "namespace": "default",
    "comfyui_instance": "image-edit",
    "pod": "image-edit-6d8f7c9b5-x2x4q",
    "job": "comfyui-system/cui-comfyui-operator-sidecars",
    "container": "sidecar",
    "endpoint": "http",
    "instance": "127.0.0.1:3000",
}
DASHBOARD_VARIABLES = {"$namespace": TARGET["namespace"], "$instance": TARGET["comfyui_instance"]}
RATE_INTERVAL = "5m"
SELECTOR = re.compile(r"(comfyui_api_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
PROMTOOL_TIMEOUT_S = 120

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(sample name, sorted labels) -> value, of the comfyui_api_* samples of one scrape."""


@dataclass
class Scrapes:
    first: Series
    second: Series

    def names(self) -> set[str]:
        return {name for name, _ in self.second}

    def value(self, name: str, **labels: str) -> float:
        return self.second.get((name, tuple(sorted(labels.items()))), 0.0)


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("comfyui_api_"):
                series[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return series


@contextlib.asynccontextmanager
async def file_server(files: dict[str, bytes]) -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/files/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        (port,) = [address[1] for address in runner.addresses if isinstance(address, tuple)]
        yield f"http://{HOST}:{port}/files"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def upscale_prompt(model_url: str, prefix: str) -> dict[str, Any]:
    prompt = empty_image_prompt(prefix=prefix)
    prompt["3"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_url}}
    prompt["4"] = {
        "class_type": "ImageUpscaleWithModel",
        "inputs": {"upscale_model": ["3", 0], "image": ["1", 0]},
    }
    prompt["2"]["inputs"]["images"] = ["4", 0]
    return prompt


def failing_prompt() -> dict[str, Any]:
    prompt = empty_image_prompt(prefix="fails")
    prompt["3"] = {"class_type": "StandinFail", "inputs": {"message": "boom", "image": ["1", 0]}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    return prompt


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(f"{url}/prompt", json=body) as response:
        await response.read()
        return response.status


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Scrapes:
    tmp = tmp_path_factory.mktemp("metrics")
    cache_dir, paths_file = tmp / "cache", tmp / "extra_model_paths.yaml"
    paths_file.write_text(extra_model_paths_yaml(None, cache_dir / "models", known_folders()))
    models = {f"x{scale}.safetensors": safetensors_bytes({"scale": str(scale)}) for scale in (2, 3)}
    dead_webhook = f"http://{HOST}:{closed_port()}/gone"
    async with (
        file_server(models) as files,
        run_webhook_receiver() as receiver,
        run_standin(tmp / "comfy", extra_model_paths_configs=[paths_file]) as comfy,
    ):
        settings = sidecar_settings(
            comfy.url,
            comfy.dirs,
            cache_dir=cache_dir,
            extra_model_paths_file=paths_file,
            download_allow_networks=["127.0.0.1/32"],
            download_backoff_seconds=0.01,
            prompt_webhook_retries=2,
        )
        async with (
            run_sidecar(settings, fetcher=build_fetcher(settings)) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            taken: list[Series] = []
            for round_, scale in enumerate((2, 3)):
                model = f"{files}/x{scale}.safetensors"
                for prefix in ("load", "hit"):
                    prompt = upscale_prompt(model, f"{prefix}{round_}")
                    assert await post(http, sidecar.url, {"prompt": prompt}) == 200
                assert await post(http, sidecar.url, {"prompt": failing_prompt()}) == 500
                for webhook in (f"{receiver.url}/ok", dead_webhook):
                    body = {"prompt": empty_image_prompt(prefix=f"wh{round_}"), "webhook": webhook}
                    assert await post(http, sidecar.url, body) == 202
                await receiver.wait_for(round_ + 1)
                await wait_for_failed_webhooks(http, sidecar.url, round_ + 1)
                async with http.get(f"{sidecar.url}/metrics") as response:
                    taken.append(parse(await response.text()))
    return Scrapes(*taken)


async def wait_for_failed_webhooks(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for _ in range(200):
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
        if parse(text).get(("comfyui_api_webhook_deliveries_total", (("outcome", "failed"),)), 0) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} failed webhook deliveries counted")


def used_names() -> dict[str, set[str]]:
    """comfyui_api_* names per file that uses them."""
    return {path.name: set(re.findall(r"comfyui_api_\w+", path.read_text())) for path in USERS}


def test_every_metric_name_used_is_exported(scrapes: Scrapes) -> None:
    exported = scrapes.names()
    for file_name, names in used_names().items():
        assert names, f"{file_name} uses no sidecar metric"
        missing = names - exported
        assert not missing, f"{file_name} uses {sorted(missing)}, which the sidecar does not export"


def test_every_label_value_matched_on_is_exported(scrapes: Scrapes) -> None:
    """`outcome="failed"`, `result="hit"`, `route="/prompt"`...: a literal the sidecar never writes matches
    nothing, silently."""
    for path in USERS:
        for name, matchers in SELECTOR.findall(path.read_text()):
            for label, op, value in MATCHER.findall(matchers):
                if op != "=" or label in TARGET or "$" in value:
                    continue
                found = any(n == name and (label, value) in labels for n, labels in scrapes.second)
                assert found, f"{path.name}: no exported {name} has {label}={value!r}"


def test_rule_test_series_have_the_exported_label_names(scrapes: Scrapes) -> None:
    exported: dict[str, set[frozenset[str]]] = {}
    for name, labels in scrapes.second:
        exported.setdefault(name, set()).add(frozenset(key for key, _ in labels))
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for item in test["input_series"]:
                match = SELECTOR.match(item["series"])
                if match is None:
                    continue
                keys = frozenset(label for label, _, _ in MATCHER.findall(match[2])) - set(TARGET)
                assert keys in exported[match[1]], f"{path.name}: {item['series']} has labels {sorted(keys)}"


def test_new_metrics_count_what_the_docs_say(scrapes: Scrapes) -> None:
    # two models, each loaded once; the second prompt per model found the loader in ComfyUI's cache
    assert scrapes.value("comfyui_api_model_loads_total", loader="UpscaleModelLoader") == 2
    # per round: two upscales and two webhook prompts succeed, one fails
    assert scrapes.value("comfyui_api_comfy_executions_total", result="success") == 8
    assert scrapes.value("comfyui_api_comfy_executions_total", result="error") == 2
    assert scrapes.value("comfyui_api_comfy_executions_total", result="interrupted") == 0
    busy = scrapes.value("comfyui_api_comfy_busy_seconds_total")
    assert busy > 0
    assert busy > scrapes.first[("comfyui_api_comfy_busy_seconds_total", ())]
    assert scrapes.value("comfyui_api_model_cache_requests_total", result="hit") >= 2
    assert scrapes.value("comfyui_api_model_cache_requests_total", result="miss") >= 2


# ---- queries evaluated by promtool over the two scrapes ----------------------------------------------------


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard panel target and every KEDA trigger, variables filled in."""
    found: list[tuple[str, str]] = []
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"dashboard: {panel['title']} {target['refId']}", expr))
    for path in KEDA_EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            for trigger in (doc or {}).get("spec", {}).get("triggers", []):
                if trigger["type"] == "prometheus":
                    found.append((f"{path.name}: {doc['metadata']['name']}", trigger["metadata"]["query"]))
    return found


def input_series(scrapes: Scrapes) -> list[dict[str, str]]:
    """Each scraped series with the target labels, the first scrape at 0m and the second at 1m."""
    items = []
    for key in sorted(set(scrapes.first) | set(scrapes.second)):
        name, labels = key
        merged = {**dict(labels), **TARGET}
        selector = ",".join(f"{label}={json.dumps(value)}" for label, value in sorted(merged.items()))
        values = " ".join(repr(s[key]) if key in s else "_" for s in (scrapes.first, scrapes.second))
        items.append({"series": f"{name}{{{selector}}}", "values": values})
    return items


def test_there_are_queries_to_evaluate() -> None:
    where = [label for label, _ in queries()]
    assert sum(label.startswith("dashboard:") for label in where) >= 6
    assert any(label.startswith("keda") for label in where)


def test_every_dashboard_and_keda_query_returns_data(scrapes: Scrapes, tmp_path: Path) -> None:
    promtool = tool_path("PROMTOOL_BINARY", "promtool", "build it: hack/build-tools.sh promtool")
    cases = [
        {
            "expr": f"vector(1) and on () (count(({expr})) > 0)",
            "eval_time": "1m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
        for _, expr in queries()
    ]
    document = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series(scrapes), "promql_expr_test": cases}],
    }
    test_file = tmp_path / "queries.test.yaml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    result = subprocess.run(
        [promtool, "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, "queries without data:\n" + result.stdout + result.stderr
