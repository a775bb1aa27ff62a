"""The cluster test's proxies are configured from the chart (scripts/cluster-nginx-conf for
nginx, scripts/cluster-haproxy-conf for haproxy): the translation of each controller's
annotations, and the drift checks that make the cluster test fail instead of testing a proxy
the chart no longer describes."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys

import pytest

from chartlib import ROOT


def load(script):
    loader = importlib.machinery.SourceFileLoader(script.replace("-", "_"), str(ROOT / "scripts" / script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


nginx_conf = load("cluster-nginx-conf")
haproxy_conf = load("cluster-haproxy-conf")


def run(script, tmp_path, values):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--prefix", str(tmp_path),
         "--listen", "127.0.0.1:1", "--server", "127.0.0.1:2", "--server", "127.0.0.1:3",
         "--values-json", json.dumps(values)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_haproxy_config_hashes_on_uuid_with_the_charts_timeouts(tmp_path):
    out = run("cluster-haproxy-conf", tmp_path, {"config": {"pollTimeout": "20s"}})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["hash_by"] == "url_param uuid"
    assert result["read_timeout_seconds"] == 50
    conf = (tmp_path / "haproxy.cfg").read_text().splitlines()
    for line in ["balance url_param uuid", "hash-type consistent", "timeout server 50s",
                 "timeout client 50s", "option redispatch 1", "retry-on conn-failure empty-response 503"]:
        assert f"    {line}" in conf, line


def test_nginx_config_follows_the_default_f5_controller(tmp_path):
    out = run("cluster-nginx-conf", tmp_path, {"config": {"pollTimeout": "20s"}})
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "nginx.conf").read_text()
    assert "hash $arg_uuid consistent;" in conf
    assert "proxy_read_timeout 50s;" in conf
    assert "max_fails=1 fail_timeout=10s" in conf


def test_nginx_config_for_ingress_nginx(tmp_path):
    out = run("cluster-nginx-conf", tmp_path, {"ingress": {"controller": "ingress-nginx"}})
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "nginx.conf").read_text()
    assert "hash $arg_uuid consistent;" in conf and "max_fails=0" in conf and "keepalive 320;" in conf


@pytest.mark.parametrize(
    ("annotations", "why"),
    [
        ({"haproxy.org/load-balance": "url_param uuid", "haproxy.org/timeout-server": "50s",
          "haproxy.org/backend-config-snippet": "hash-type consistent\nhttp-request deny\n"}, "not translated"),
        ({"haproxy.org/load-balance": "url_param uuid", "haproxy.org/timeout-server": "50s"}, "without hash-type consistent"),
        ({"haproxy.org/load-balance": "url_param uuid", "haproxy.org/timeout-server": "50s",
          "haproxy.org/backend-config-snippet": "hash-type consistent\n", "haproxy.org/cors-enable": "true"}, "not translated"),
    ],
)
def test_haproxy_translation_refuses_what_it_does_not_know(annotations, why, capsys):
    with pytest.raises(SystemExit):
        haproxy_conf.translate(annotations)
    assert why in capsys.readouterr().err


def test_nginx_translation_refuses_an_unknown_annotation(capsys):
    with pytest.raises(SystemExit):
        nginx_conf.translate({"nginx.org/lb-method": "hash $arg_uuid consistent", "nginx.org/server-snippets": "x"})
    assert "not translated" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["cluster-haproxy-conf", "cluster-nginx-conf"])
def test_a_proxy_timeout_not_above_the_poll_timeout_fails(tmp_path, script):
    """A chart whose proxy timeout fell to the poll timeout is refused (drift check)."""
    out = run(script, tmp_path, {"config": {"pollTimeout": "20s"},
                                 "ingress": {"annotations": {"haproxy.org/timeout-server": "20s",
                                                             "nginx.org/proxy-read-timeout": "20s"}}})
    assert out.returncode == 1
    assert "is not above the poll timeout" in out.stderr
