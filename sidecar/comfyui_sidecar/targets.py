"""Where a prompt's results go (webhooks, an upload block), checked by the egress policy when the prompt is
accepted: a refused target is a 400 before anything runs, and no failure webhook goes to it."""

from __future__ import annotations

from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl
from comfyui_sidecar.fetching import S3Auth
from comfyui_sidecar.models import PromptRequest
from comfyui_sidecar.sources.s3_client import pod_configured
from comfyui_sidecar.uploads import Uploader, UploadError, UploadTargets
from comfyui_sidecar.webhooks import WebhookSender


class TargetRefused(Exception):
    def __init__(self, message: str, location: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location


def s3_enabled(request: PromptRequest) -> bool:
    """Upstream honours an `s3` block only when S3 is set up; here also when the request brings an s3 key."""
    return pod_configured() or any(isinstance(c.auth, S3Auth) for c in request.credentials or ())


def upload_targets(request: PromptRequest) -> UploadTargets:
    return UploadTargets(request.s3, request.hf_upload, request.http_upload, request.credentials or ())


async def check_targets(request: PromptRequest, webhooks: WebhookSender, uploader: Uploader | None) -> None:
    """Check `webhook`, `webhook_v2` and the upload target (the legacy `webhook` wins over uploads, as
    upstream). Drops an `s3` block S3 is not set up for (as upstream drops it). Raises TargetRefused."""
    if request.s3 is not None and not s3_enabled(request):
        request.s3 = None
    for name in ("webhook", "webhook_v2"):
        url = getattr(request, name)
        if url is None:
            continue
        try:
            await webhooks.check_target(url)
        except (InvalidUrl, EgressRefused) as error:
            raise TargetRefused(f"Bad Request: {name}: {error.message}", name) from None
    targets = upload_targets(request)
    if targets.chosen is None or request.webhook:
        return
    if uploader is None:
        raise TargetRefused("Bad Request: uploads are not enabled on this sidecar", "body")
    try:
        await uploader.check(targets)
    except UploadError as error:
        raise TargetRefused(f"Bad Request: {error.message}", error.location) from None
