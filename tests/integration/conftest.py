"""Registers the shared integration fixtures; the helpers themselves live in sidecar_harness.py.

Test modules import helpers from `sidecar_harness`, never from `conftest`: several directories have a conftest
module, and importing one by that name picks whichever was loaded last.
"""

from sidecar_harness import http, sidecar, standin, webhooks

__all__ = ["http", "sidecar", "standin", "webhooks"]
