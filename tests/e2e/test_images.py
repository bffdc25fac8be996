"""The images: size, non-root user, no build tools, OCI labels, entrypoints that run."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import BuiltImage, Docker

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
# Ceilings with headroom over what the local (debootstrap) and public (python:3.12-slim) bases give.
SIZE_LIMITS_MIB = {"operator": 350, "sidecar": 400}
NON_ROOT_UID = "65532"
BUILD_TOOLS = ("gcc", "cc", "make", "g++", "pip", "pip3")


def _config(docker: Docker, image: BuiltImage) -> dict[str, object]:
    raw = docker.run("image", "inspect", "-f", "{{json .Config}}", image.name).stdout
    config: dict[str, object] = json.loads(raw)
    return config


@pytest.mark.parametrize("component", ["operator", "sidecar"])
def test_image_size_is_bounded(images: dict[str, BuiltImage], component: str) -> None:
    image = images[component]
    size_mib = image.size_bytes / MIB
    print(f"\n{image.name}: {size_mib:.0f} MiB, build {image.build_seconds} s")
    assert size_mib < SIZE_LIMITS_MIB[component], f"{image.name} is {size_mib:.0f} MiB"


@pytest.mark.parametrize("component", ["operator", "sidecar"])
def test_runs_as_a_numeric_non_root_user(
    docker: Docker, images: dict[str, BuiltImage], component: str
) -> None:
    image = images[component]
    assert _config(docker, image)["User"] == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    ids = docker.run("run", "--rm", "--network", "none", "--entrypoint", "id", image.name).stdout
    assert ids.startswith(f"uid={NON_ROOT_UID} gid={NON_ROOT_UID}"), ids


@pytest.mark.parametrize("component", ["operator", "sidecar"])
def test_no_build_tools_in_the_final_image(
    docker: Docker, images: dict[str, BuiltImage], component: str
) -> None:
    probe = " ; ".join(f"command -v {tool} || true" for tool in BUILD_TOOLS)
    found = docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", images[component].name, "-c", probe
    )
    assert found.stdout.strip() == "", f"build tools in {component}: {found.stdout}"


@pytest.mark.parametrize("component", ["operator", "sidecar"])
def test_oci_labels(docker: Docker, images: dict[str, BuiltImage], component: str) -> None:
    labels = _config(docker, images[component])["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.title"] == f"comfyui-{component}"
    for key in ("source", "licenses", "version", "revision", "description"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_sidecar_help_lists_its_settings(docker: Docker, images: dict[str, BuiltImage]) -> None:
    result = docker.run("run", "--rm", "--network", "none", images["sidecar"].name, "--help")
    assert "PORT" in result.stdout.upper(), result.stdout[:500]
    assert "COMFYUI_URL" in result.stdout.upper(), result.stdout[:500]


def test_standin_entrypoint_is_in_the_sidecar_image(docker: Docker, images: dict[str, BuiltImage]) -> None:
    result = docker.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "comfyui-standin",
        images["sidecar"].name,
        "--help",
    )
    assert "--extra-model-paths-config" in result.stdout


def test_sidecar_image_has_pillow_and_huggingface_hub(docker: Docker, images: dict[str, BuiltImage]) -> None:
    code = "import PIL, huggingface_hub; print(PIL.__version__, huggingface_hub.__version__)"
    result = docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", images["sidecar"].name, "-c", code
    )
    assert len(result.stdout.split()) == 2


def test_operator_console_script_is_installed(docker: Docker, images: dict[str, BuiltImage]) -> None:
    result = docker.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        images["operator"].name,
        "-c",
        "command -v comfyui-operator && python3 -c 'import comfyui_operator, kopf, kubernetes'",
    )
    assert result.stdout.strip() == "/opt/venv/bin/comfyui-operator"


def test_operator_entrypoint_runs_and_rejects_bad_settings(
    docker: Docker, images: dict[str, BuiltImage]
) -> None:
    image = images["operator"].name
    version = docker.run("run", "--rm", "--network", "none", image, "--version")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version.stdout.strip()), version.stdout
    bad = docker.run(
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "COMFYUI_OPERATOR_NAMESPACES=Not_A_Namespace",
        image,
        check=False,
    )
    assert bad.returncode != 0
    assert "Not_A_Namespace" in bad.stderr
    assert "Traceback" not in bad.stderr
