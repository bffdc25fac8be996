"""Entry point `comfyui-operator`: settings, logging, metrics, leader election, then kopf.

Environment: see comfyui_operator.settings (COMFYUI_OPERATOR_*), plus KUBECONFIG outside a cluster and
POD_NAME/POD_NAMESPACE (downward API) inside one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import kopf
import urllib3
from kubernetes import config
from pydantic import ValidationError

from comfyui_operator import __version__, handlers, metrics
from comfyui_operator.health import standby_health
from comfyui_operator.kube import Kube, load_api_client
from comfyui_operator.leader import LeaderElector
from comfyui_operator.reconcile import Reconciler
from comfyui_operator.settings import OperatorSettings, load_settings

logger = logging.getLogger("comfyui_operator")


class QuietWatchEvents(logging.Filter):
    """Drops kopf's per-object lines below warning that kopf itself keeps out of Events (`k8s_skip`): one
    "Handler 'pod_changed' succeeded." per watch event of every pod, Deployment and instance (about 200 lines
    a minute for 200 idle instances). Handler results of spec changes and every warning or error stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not getattr(record, "k8s_skip", False)


def configure_logging(settings: OperatorSettings) -> None:
    """JSON (default) or text logs on stderr, for kopf's loggers and ours alike."""
    debug = settings.log_level == "debug"
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=debug, verbose=debug, log_format=log_format)
    logging.getLogger().setLevel(settings.log_level.upper())
    logging.getLogger("comfyui_operator").setLevel(settings.log_level.upper())
    kopf_objects = logging.getLogger("kopf.objects")
    for old in [f for f in kopf_objects.filters if isinstance(f, QuietWatchEvents)]:
        kopf_objects.removeFilter(old)
    if not debug:
        kopf_objects.addFilter(QuietWatchEvents())


def unusable_ports(settings: OperatorSettings) -> list[str]:
    """The operator's listening ports that another process holds already, as `VARIABLE=port: reason`."""
    problems = []
    for variable, port in (
        ("METRICS_PORT", settings.metrics_port),
        ("LIVENESS_PORT", settings.liveness_port),
    ):
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind it
            try:
                probe.bind(("0.0.0.0", port))  # noqa: S104 - the servers listen on all interfaces
            except OSError as exc:
                problems.append(f"COMFYUI_OPERATOR_{variable}={port}: {exc.strerror or exc}")
    return problems


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def lead(elector: LeaderElector, stop: asyncio.Event) -> bool:
    """Keep the Lease until `stop`; False when the renewal crashed, which stops the operator too (nothing
    would renew the Lease any more, so kopf must not go on acting without it)."""
    try:
        await elector.keep_leading(stop)
    except Exception:
        logger.exception("leader election failed; stopping the operator")
        stop.set()
        return False
    return True


async def run(settings: OperatorSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    busy = unusable_ports(settings)
    if busy:
        logger.error("port already in use, another operator running? %s", "; ".join(busy))
        return 2
    try:
        kube = Kube(load_api_client())
    except config.ConfigException as exc:
        logger.error("no Kubernetes credentials (in-cluster or KUBECONFIG): %s", exc)
        return 2
    try:
        metrics.start_metrics_server(settings.metrics_port)
    except OSError as exc:  # taken between the check and now
        logger.error("COMFYUI_OPERATOR_METRICS_PORT=%d: %s", settings.metrics_port, exc.strerror or exc)
        return 2
    lease_task: asyncio.Task[bool] | None = None
    elector: LeaderElector | None = None
    own_identity = identity()
    if settings.leader_election:
        namespace = settings.lease_namespace
        # Its own connection pool and thread: with hundreds of instances reconciling, the shared thread pool
        # queues API calls for longer than the Lease lasts, and a leader that can not renew stops.
        lease_kube = Kube(load_api_client(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease"))
        elector = LeaderElector(
            lease_kube, namespace, settings.lease_name, own_identity, settings.lease_duration_seconds
        )
        logger.info("waiting for the lease %s/%s", namespace, settings.lease_name)
        async with standby_health(settings.liveness_port):
            leading = await elector.wait_until_leader(stop)
        if not leading:
            return 0
        lease_task = asyncio.create_task(lead(elector, stop))

    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(kube=kube, settings=settings, post_event=handlers.post_kopf_event)
    handlers.register(registry, reconciler, settings)
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    logger.info(
        "comfyui-operator %s starting (%s)",
        __version__,
        "cluster-wide" if settings.clusterwide else "namespaces " + ",".join(settings.namespaces),
    )
    renewal_crashed = False
    try:
        await kopf.operator(
            registry=registry,
            settings=handlers.kopf_settings(settings),
            standalone=True,  # single-active is guaranteed by the Lease, not by kopf peering
            # kopf would otherwise derive one from the user name, which does not exist for the image's uid.
            # (Its type, a NewType of str, is not exported by kopf.)
            identity=own_identity,  # type: ignore[arg-type]
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop,
        )
    finally:
        logger.info("kopf stopped")
        stop.set()
        if lease_task is not None:
            renewal_crashed = not await lease_task
        if elector is not None and not elector.lost:
            await elector.release()
    return 1 if renewal_crashed or (elector is not None and elector.lost) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comfyui-operator",
        description="Kubernetes operator for ComfyUIInstance resources (settings: COMFYUI_OPERATOR_* env).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"comfyui-operator: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # An insecure kubeconfig (tests, kind) would otherwise log this warning on every API call.
    warnings.filterwarnings("once", category=urllib3.exceptions.InsecureRequestWarning)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
