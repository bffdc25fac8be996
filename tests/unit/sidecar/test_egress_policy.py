"""The egress package without a network: the one URL parser, address classes, the policy, the resolver and the
socket factory that check every connection."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from comfyui_sidecar.egress.addresses import AllowList, internal_reason, never_reason
from comfyui_sidecar.egress.connector import GuardedResolver, guarded_socket_factory
from comfyui_sidecar.egress.policy import EgressPolicy, EgressRefused, Protected
from comfyui_sidecar.egress.urls import HTTP_SCHEMES, InvalidUrl, parse_ip_literal, parse_url, with_query

# -- the parser ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://h:65536/a.pt", "port must be a number from 1 to 65535"),
        ("http://h:99999999999/a.pt", "port must be a number from 1 to 65535"),
        ("http://h:0/a.pt", "port must be a number from 1 to 65535"),
        ("http://h:x/a.pt", "port must be a number from 1 to 65535"),
        ("http://" + "a" * 64 + ".example.com/a.pt", "label is longer than 63"),
        ("http://" + ".".join(["a" * 60] * 5) + "/a.pt", "longer than 253"),
        ("http://\ud800.example.com/a.pt", "unpaired surrogate"),
        ("http://example.com/\udfff.pt", "unpaired surrogate"),
        ("http://exa mple.com/a.pt", "not a valid host name"),
        ("http://exa\r\nmple.com/a.pt", "control characters"),
        ("http://[::1/a.pt", "Invalid URL"),
        ("http://[fe80::1%eth0/x", "Invalid URL"),
        ("http:///a.pt", "needs a scheme and a host"),
        ("not a url", "needs a scheme and a host"),
        ("http://[example.com]/a", "IPv6 address"),
    ],
)
def test_the_parser_refuses_what_no_url_can_be(text: str, fragment: str) -> None:
    with pytest.raises(InvalidUrl) as err:
        parse_url(text)
    assert fragment in err.value.message


def test_the_parser_normalises_and_keeps_the_text() -> None:
    url = parse_url("HTTPS://me:p%40ss@Example.COM:8443/a%20b.pt?token=x#frag")
    assert (url.scheme, url.host, url.port, url.username, url.password) == (
        "https",
        "example.com",
        8443,
        "me",
        "p@ss",
    )
    assert url.text == "HTTPS://me:p%40ss@Example.COM:8443/a%20b.pt?token=x#frag"  # the cache key
    assert url.public == "https://example.com:8443/a%20b.pt?token=x#frag"
    assert url.redacted == "https://example.com:8443/a%20b.pt?…"
    assert url.target == "https://example.com:8443/a%20b.pt?token=x"
    assert url.origin == ("https", "example.com", 8443)
    assert parse_url("http://münchen.example/x").host == "xn--mnchen-3ya.example"
    assert parse_url("s3://my-bucket/a/b.png").host == "my-bucket"
    assert with_query(parse_url("https://h/a.pt?x=1&token=old"), (("token", "v"),)) == (
        "https://h/a.pt?x=1&token=v"
    )


@pytest.mark.parametrize(
    ("host", "addr"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
    ],
)
def test_every_spelling_of_an_address_is_an_address(host: str, addr: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == addr
    if addr is not None and "%" not in host:
        url = parse_url(f"http://{host if host.startswith('[') or ':' not in host else f'[{host}]'}/x")
        assert str(url.ip) == addr
        assert url.target == f"http://{url.netloc}/x"  # the wire form is the canonical address


# -- address classes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.31.255.255",
        "192.168.0.1",
        "100.64.1.1",
        "240.0.0.1",
        "::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
        "fec0::1",
        "::ffff:0:7f00:1",
    ],
)
def test_internal_addresses(addr: str) -> None:
    assert internal_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize(
    "addr",
    [
        "169.254.169.254",
        "169.254.1.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_addresses_no_allow_list_opens(addr: str) -> None:
    assert never_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.69"])
def test_public_addresses(addr: str) -> None:
    assert internal_reason(ipaddress.ip_address(addr)) is None
    assert never_reason(ipaddress.ip_address(addr)) is None


# -- the policy ---------------------------------------------------------------------------------------

COMFY = Protected(
    "ComfyUI's own address", "127.0.0.1", 8188, frozenset({ipaddress.ip_address("127.0.0.1")}), True
)
OWN = frozenset({ipaddress.ip_address("10.9.8.7")})


def policy(allow: list[str], purpose: str = "download") -> EgressPolicy:
    return EgressPolicy(
        purpose,  # type: ignore[arg-type]
        HTTP_SCHEMES,
        AllowList.parse(allow),
        "DOWNLOAD_ALLOW_NETWORKS",
        protected=(COMFY,),
        own_addresses=OWN,
    )


def test_allow_list_opens_internal_addresses_but_never_metadata_or_comfyui() -> None:
    everything = policy(["0.0.0.0/0", "::/0", "minio.local"])
    everything.check_url(parse_url("http://10.2.3.4/x"))
    everything.check_url(parse_url("http://minio.local/x"))
    everything.check_url(parse_url("http://127.0.0.1:8189/x"))
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
        "http://0.0.0.0:8080/",
        "http://127.0.0.1:8188/interrupt",
        "http://127.0.0.2:8188/prompt",
        "http://2130706433:8188/prompt",
        "http://0177.0.0.1:8188/prompt",
        "http://[::1]:8188/prompt",
        "http://[::ffff:127.0.0.1]:8188/prompt",
        "http://10.9.8.7:8188/prompt",  # this pod's own address, ComfyUI's port
    ):
        with pytest.raises(EgressRefused, match="never allowed"):
            everything.check_url(parse_url(url))


def test_refusals_name_the_setting_and_the_scheme_list() -> None:
    strict = policy([])
    with pytest.raises(
        EgressRefused, match=r"192\.168\.0\.1: it is a private address \(add it to DOWNLOAD_ALLOW"
    ):
        strict.check_url(parse_url("http://192.168.0.1/x"))
    with pytest.raises(EgressRefused, match=r"scheme 'file' is not allowed here \(allowed: http, https\)"):
        strict.check_url(parse_url("file://host/etc/passwd"))
    strict.check_url(parse_url("https://example.com/x"))  # names are judged on their addresses


class _FakeResolver(AbstractResolver):
    def __init__(self, *answers: str) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.answers
        ]

    async def close(self) -> None:
        return None


def test_the_resolver_checks_every_address_a_name_resolves_to() -> None:
    strict = policy([])
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.7\): it is a private address"):
        asyncio.run(
            GuardedResolver(strict, _FakeResolver("93.184.216.34", "10.0.0.7")).resolve("rebind.example", 80)
        )
    with pytest.raises(EgressRefused, match="cloud metadata"):
        asyncio.run(GuardedResolver(strict, _FakeResolver("169.254.169.254")).resolve("metadata.example", 80))
    good = GuardedResolver(strict, _FakeResolver("93.184.216.34"))
    assert asyncio.run(good.resolve("example.com", 80))[0]["host"] == "93.184.216.34"
    named = policy(["minio.local"])
    assert asyncio.run(GuardedResolver(named, _FakeResolver("10.0.0.7")).resolve("minio.local", 80))
    # the socket factory only sees addresses: the name vouched for this one
    guarded_socket_factory(named)((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80))).close()
    with pytest.raises(EgressRefused, match="never allowed"):
        asyncio.run(GuardedResolver(named, _FakeResolver("127.0.0.1")).resolve("minio.local", 8188))


@pytest.mark.parametrize(
    ("addr", "port"),
    [("127.0.0.1", 80), ("::1", 80), ("169.254.169.254", 80), ("10.0.0.1", 80), ("127.0.0.1", 8188)],
)
def test_the_socket_factory_refuses_the_connection_itself(addr: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with pytest.raises(EgressRefused):
        guarded_socket_factory(policy([]))((family, socket.SOCK_STREAM, 6, "", (addr, port)))


def test_webhooks_reach_in_cluster_receivers_by_their_own_allow_list() -> None:
    hooks = EgressPolicy(
        "webhook",
        HTTP_SCHEMES,
        AllowList.parse(["10.0.0.0/8", "fc00::/7"]),
        "WEBHOOK_ALLOW_NETWORKS",
        protected=(COMFY,),
    )
    hooks.check_url(parse_url("http://10.1.2.3:8080/hook"))
    with pytest.raises(EgressRefused, match=r"refusing to send a webhook to 127\.0\.0\.1: it is a loopback"):
        hooks.check_url(parse_url("http://127.0.0.1:9000/hook"))
