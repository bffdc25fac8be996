"""Pure parts of the sources: credentials, the Hugging Face URL form, S3 URLs, the registry's schemes."""

from __future__ import annotations

import base64

import pytest
from comfyui_sidecar.egress.client import NO_AUTH
from comfyui_sidecar.egress.urls import parse_url, with_query
from comfyui_sidecar.fetching import BasicAuth, BearerAuth, Credential, HeaderAuth, QueryAuth, S3Auth
from comfyui_sidecar.sources.credentials import glob_regex, match_credential, request_auth
from comfyui_sidecar.sources.hf import parse_hf
from comfyui_sidecar.sources.registry import SCHEMES, UnsupportedScheme, check_scheme
from comfyui_sidecar.sources.s3 import parse_s3


def test_glob_semantics() -> None:
    assert glob_regex("https://h/**").match("https://h/a/b/c?x=1")
    assert glob_regex("https://h/*").match("https://h/a?x=1")
    assert not glob_regex("https://h/*").match("https://h/a/b")
    assert glob_regex("https://h/?.pt").match("https://h/a.pt")
    assert not glob_regex("https://h/a.pt").match("https://h/aXpt")
    assert not glob_regex("https://h/a").match("https://h/a/extra")


def test_first_matching_credential_wins() -> None:
    creds = [
        Credential(url_pattern="https://other/**", auth=BearerAuth(type="bearer", token="x")),
        Credential(url_pattern="https://h/**", auth=BearerAuth(type="bearer", token="first")),
        Credential(url_pattern="**", auth=BearerAuth(type="bearer", token="second")),
    ]
    auth = match_credential("https://h/m.pt", creds)
    assert isinstance(auth, BearerAuth)
    assert auth.token == "first"
    assert match_credential("https://nomatch/", creds[:2]) is None


def test_request_auth_kinds_and_precedence() -> None:
    url = parse_url("https://h/a.pt")
    assert request_auth(BearerAuth(type="bearer", token="t"), url=url).headers == {
        "Authorization": "Bearer t"
    }
    basic = request_auth(BasicAuth(type="basic", username="u", password="p"), url=url).headers[
        "Authorization"
    ]
    assert base64.b64decode(basic.split()[1]) == b"u:p"
    assert request_auth(HeaderAuth(type="header", header_name="X-K", header_value="v"), url=url).headers == {
        "X-K": "v"
    }
    q = request_auth(QueryAuth(type="query", query_param="token", query_value="v"), url=url)
    assert with_query(parse_url("https://h/a.pt?x=1&token=old"), q.query) == "https://h/a.pt?x=1&token=v"
    from_url = request_auth(None, url=parse_url("https://me:pw@h/a"), global_header=("X-G", "g"))
    assert base64.b64decode(from_url.headers["Authorization"].split()[1]) == b"me:pw"
    assert request_auth(None, url=url, global_header=("X-G", "g")).headers == {"X-G": "g"}
    assert request_auth(None, url=url) == NO_AUTH
    assert request_auth(S3Auth(type="s3", access_key_id="a", secret_access_key="b"), url=url) == NO_AUTH


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://huggingface.co/org/repo/resolve/main/sub/model.safetensors",
            ("org/repo", "model", "main", "sub/model.safetensors"),
        ),
        (
            "https://huggingface.co/datasets/org/ds/resolve/v1.0/data.bin?download=true",
            ("org/ds", "dataset", "v1.0", "data.bin"),
        ),
        ("https://huggingface.co/gpt2/resolve/main/model.bin", ("gpt2", "model", "main", "model.bin")),
        (
            "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/a.pt",
            ("org/repo", "model", "refs/pr/1", "a.pt"),
        ),
        ("https://huggingface.co/org/repo/blob/main/a.pt", None),
        ("https://huggingface.co/org/repo/resolve/main/../a.pt", None),
        ("https://example.com/org/repo/resolve/main/a.pt", None),
    ],
)
def test_parse_hf_url(url: str, expected: tuple[str, str, str, str] | None) -> None:
    ref = parse_hf(parse_url(url), parse_url("https://huggingface.co"))
    assert (None if ref is None else (ref.repo_id, ref.repo_type, ref.revision, ref.path)) == expected


def test_s3_urls() -> None:
    ref = parse_s3(parse_url("s3://models/sd/a%20b.safetensors"))
    assert ref is not None
    assert (ref.bucket, ref.object_key) == ("models", "sd/a b.safetensors")
    assert parse_s3(parse_url("s3://models/")) is None
    assert parse_s3(parse_url("https://models/x")) is None


def test_the_registry_owns_the_scheme_list() -> None:
    assert {"http", "https", "s3"} == SCHEMES
    for text in ("ftp://h/a.pt", "file://h/etc/passwd", "gopher://h/"):
        with pytest.raises(UnsupportedScheme, match=r"supported schemes: http, https, s3"):
            check_scheme(parse_url(text))
