"""Safe for many hosts (issue 16, item 3), without a second host:

* a loopback Prefect API URL with Ray nodes registered under other hosts' addresses is refused
  with one line saying what to set (unit test on `ray.nodes()`-shaped input);
* only an allow-list of variables reaches Ray workers' runtime_env, never credentials.
The end-to-end check (a key in the parent, an auth-requiring server, a Ray cluster whose
workers do not have the key) is tests/test_worker_credentials.py.
"""
from __future__ import annotations

import pytest

from tournament.errors import ConfigError

HERE = {"127.0.0.1", "::1", "10.0.0.4", "driver-host"}


def node(addr: str, host: str, alive: bool = True) -> dict:
    """The fields of a `ray.nodes()` entry the check reads (Ray 2.60 names)."""
    return {"NodeID": addr.replace(".", "") * 2, "Alive": alive, "NodeManagerAddress": addr,
            "NodeManagerHostname": host, "NodeManagerPort": 40000, "Resources": {"CPU": 8.0}}


def test_loopback_api_with_nodes_on_other_hosts_is_refused_with_one_line():
    from flows.runtime import check_api_reaches_all_nodes
    nodes = [node("10.0.0.4", "driver-host"), node("10.0.0.7", "worker-1"),
             node("10.0.0.8", "worker-2")]
    for url in ("http://127.0.0.1:4200/api", "http://localhost:4200/api", "http://[::1]:4200/api"):
        with pytest.raises(ConfigError) as err:
            check_api_reaches_all_nodes(url, nodes, here=HERE)
        msg = str(err.value)
        assert "\n" not in msg and "10.0.0.7, 10.0.0.8" in msg and url in msg
        assert "set PREFECT_API_URL" in msg


@pytest.mark.parametrize("url, nodes", [
    # a reachable API URL: fine whatever the nodes
    ("http://10.0.0.4:4200/api", [node("10.0.0.7", "worker-1")]),
    ("https://api.prefect.cloud/api/accounts/a/workspaces/w", [node("10.0.0.7", "worker-1")]),
    # loopback API, every node on this host (loopback, or this host's own IP / name)
    ("http://127.0.0.1:4200/api", [node("127.0.0.1", "driver-host"), node("127.0.0.1", "x")]),
    ("http://127.0.0.1:4200/api", [node("10.0.0.4", "driver-host"), node("10.0.0.4", "other")]),
    ("http://127.0.0.1:4200/api", [node("192.168.1.9", "driver-host")]),
    # a dead node on another host does not count
    ("http://127.0.0.1:4200/api", [node("10.0.0.4", "d"), node("10.0.0.9", "w", alive=False)]),
    (None, [node("10.0.0.7", "worker-1")]),
])
def test_reachable_setups_pass(url, nodes):
    from flows.runtime import check_api_reaches_all_nodes
    check_api_reaches_all_nodes(url, nodes, here=HERE)


def test_this_hosts_real_addresses_count_as_local():
    from flows.runtime import local_addresses, nodes_on_other_hosts
    here = local_addresses()
    assert "127.0.0.1" in here
    assert nodes_on_other_hosts([node(a, "?") for a in here], here) == []


def test_only_the_allow_list_reaches_ray_workers(monkeypatch):
    from flows.runtime import THREAD_ENV, worker_env
    secrets = {"PREFECT_API_KEY": "pnu_secret1", "PREFECT_API_AUTH_STRING": "admin:secret2",
               "PREFECT_SERVER_API_AUTH_STRING": "admin:secret3",
               "PREFECT_CLOUD_API_KEY": "secret4", "TOURNAMENT_S3_SECRET_KEY": "secret5",
               "TOURNAMENT_API_TOKEN": "secret6", "AWS_SECRET_ACCESS_KEY": "secret7",
               "RAY_AUTH_TOKEN": "secret8", "NUMBA_AUTH": "secret9"}
    allowed = {"PREFECT_API_URL": "http://10.0.0.4:4200/api",
               "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "local-file-system/shared",
               "TOURNAMENT_LOCK_LEASE": "60", "NUMBA_CACHE_DIR": "/tmp/nc",
               "OMP_NUM_THREADS": "2"}
    other = {"PREFECT_HOME": "/root/.prefect", "PREFECT_PROFILES_PATH": "/p.toml",
             "PYTHONPATH": "/x", "HOME": "/root"}
    for k, v in {**secrets, **allowed, **other}.items():
        monkeypatch.setenv(k, v)
    env = worker_env()
    for k, v in allowed.items():
        assert env[k] == v, k
    for k in (*secrets, *other):
        assert k not in env, k
    assert not any(v in str(env) for v in secrets.values())
    assert set(THREAD_ENV) <= set(env)
