"""Fault catalogue #8: trust boundary. The services a run starts listen on loopback only;
no secret values in prefect.yaml; the tournament blocks hold no credentials (storage
credentials live in the storage block result_storage names), and a credential an older
ComputeBlock document still holds is dropped on load, never kept as a plain attribute."""
from __future__ import annotations

import ipaddress
import re

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _exposed(sockets):
    return [s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback]


def _is_prefect_server(sock) -> bool:
    return "uvicorn" in sock[3] or "prefect.server" in sock[3] or "prefect" in sock[3].split(" -c ")[0] and "flows.cli" not in sock[3]


def test_cli_prefect_server_listens_on_loopback_only(clean_run):
    server = [s for s in clean_run.sockets if _is_prefect_server(s)]
    assert server, f"the run's own Prefect server was not seen listening: {clean_run.sockets}"
    assert _exposed(server) == [], f"Prefect server reachable from outside: {_exposed(server)}"


@pytest.mark.xfail(strict=True, reason="KNOWN (reported): Ray 2.60 binds its gRPC servers "
                   "(gcs_server, raylet, core workers, agents) to 0.0.0.0/:: and the runtime-env "
                   "agent to the host address even with _node_ip_address=127.0.0.1. "
                   "Remove this mark once flows.runtime.init_ray restricts them.")
def test_ray_listens_on_loopback_only(clean_run):
    ray_socks = [s for s in clean_run.sockets if not _is_prefect_server(s)]
    assert any("gcs_server" in s[2] or "raylet" in s[2] for s in ray_socks), ray_socks
    assert _exposed(ray_socks) == [], f"Ray reachable from outside this host: {_exposed(ray_socks)}"


SECRET_KEY = re.compile(r"(secret|password|passwd|token|api[_-]?key|aws_secret|access[_-]?key"
                        r"|credentials?)\s*[:=]\s*(\S+)", re.I)


def test_prefect_yaml_holds_no_literal_secrets():
    text = (REPO / "prefect.yaml").read_text()
    hits = []
    for lineno, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        for m in SECRET_KEY.finditer(code):
            value = m.group(2).strip("\"'")
            # Allowed: empty/null, or a reference resolved at run time ({{ ... }}, $VAR).
            if value and value.lower() not in ("null", "~", "none") and not value.startswith(("{{", "$")):
                hits.append((lineno, line.strip()))
    assert hits == [], f"literal secret-looking values in prefect.yaml: {hits}"


def test_compute_block_holds_no_credentials_and_drops_an_old_documents_secret(caplog):
    import logging

    from blocks.tournament_blocks import ComputeBlock, DataSourceBlock, TournamentGridBlock
    for cls in (ComputeBlock, DataSourceBlock, TournamentGridBlock):
        secret_fields = [n for n, f in cls.model_fields.items()
                         if "SecretStr" in repr(f.annotation) or "credential" in n]
        assert secret_fields == [], f"{cls.__name__} has credential fields {secret_fields}"
    # A document saved before issue 16 (storage_credentials, SecretStr) as Block.load
    # receives it (include_secrets=True): the value must not survive as an extra attribute.
    secret = "s3cr3t-VALUE-for-reliability-test"
    block = ComputeBlock.model_validate({"num_cpus": 2, "result_storage": "/tmp/x",
                                         "storage_credentials": secret})
    kwargs = block.to_flow_kwargs()
    logger = logging.getLogger("prefect.flow_runs")
    with caplog.at_level(logging.INFO):
        logger.info("block %r kwargs %s", block, kwargs)
        logger.info("block %s", block)
    texts = [repr(block), str(block), repr(kwargs), str(block.model_dump()), caplog.text,
             block.model_dump_json(), repr(vars(block)), repr(block.__pydantic_extra__)]
    for t in texts:
        assert secret not in t
    assert not hasattr(block, "storage_credentials")
    assert kwargs == {"ray_address": None, "result_storage": "/tmp/x", "num_cpus": 2}
