"""RabbitMQ from the RabbitMQ Cluster Operator: a RabbitmqCluster, and the gateway wired to it
(every node's address in LONGPOLL_BROKER, the operator's default-user credentials mounted as
files and read through --broker-username-file / --broker-password-file)."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, NAMESPACE, VALUE_SETS, binary_settings_source, deep_merge

NAME = f"{FULLNAME}-rabbitmq"
CLUSTER = VALUE_SETS["rabbitmq-cluster"]


def env_of(rendered):
    return {e["name"]: e for e in rendered.container["env"]}


def test_no_rabbitmq_cluster_by_default(render):
    assert not render().has("RabbitmqCluster")


def test_rabbitmq_cluster_spec(render):
    cluster = render(CLUSTER).one("RabbitmqCluster")
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert cluster["metadata"]["name"] == NAME
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert spec["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert spec["persistence"] == {"storage": "10Gi"}
    # An unacked delivery (held for a retry) must outlive the replay TTL on the broker.
    assert "consumer_timeout = 1800000" in spec["rabbitmq"]["additionalConfig"]
    assert "image" not in spec  # the operator's default image


def test_gateway_gets_every_node_by_its_stable_name(render):
    env = env_of(render(CLUSTER))
    urls = env["LONGPOLL_BROKER"]["value"].split(",")
    assert urls == [
        f"amqp://{NAME}-server-{i}.{NAME}-nodes.{NAMESPACE}.svc:5672/%2F" for i in range(3)
    ]
    # No credentials in the URLs: they are files.
    assert all("@" not in url for url in urls)


def test_node_addresses_follow_the_replicas(render):
    values = deep_merge(CLUSTER, {"rabbitmq": {"cluster": {"replicas": 5}}})
    urls = env_of(render(values))["LONGPOLL_BROKER"]["value"].split(",")
    assert len(urls) == 5 and urls[4].startswith(f"amqp://{NAME}-server-4.")


def test_service_address_instead_of_the_nodes(render):
    env = env_of(render(VALUE_SETS["rabbitmq-cluster-service-address"]))
    assert env["LONGPOLL_BROKER"]["value"] == f"amqp://{NAME}.{NAMESPACE}.svc:5672/%2F"


def test_credentials_come_from_the_operators_default_user_secret_as_files(render):
    rendered = render(CLUSTER)
    env = env_of(rendered)
    assert env["LONGPOLL_BROKER_USERNAME_FILE"]["value"] == "/etc/longpoll/rabbitmq/username"
    assert env["LONGPOLL_BROKER_PASSWORD_FILE"]["value"] == "/etc/longpoll/rabbitmq/password"
    (volume,) = [v for v in rendered.pod["volumes"] if v["name"] == "rabbitmq-default-user"]
    assert volume["secret"] == {
        "secretName": f"{NAME}-default-user",
        "items": [{"key": "username", "path": "username"}, {"key": "password", "path": "password"}],
    }
    (mount,) = [m for m in rendered.container["volumeMounts"] if m["name"] == "rabbitmq-default-user"]
    assert mount == {"name": "rabbitmq-default-user", "mountPath": "/etc/longpoll/rabbitmq", "readOnly": True}
    # The variables are settings the binary reads.
    config_src = binary_settings_source()
    for name in ["LONGPOLL_BROKER_USERNAME_FILE", "LONGPOLL_BROKER_PASSWORD_FILE"]:
        assert f'"{name}"' in config_src


def test_the_chart_secret_holds_no_broker_url_with_the_cluster(render):
    rendered = render(VALUE_SETS["rabbitmq-cluster-service-address"])
    secret = rendered.one("Secret")
    assert set(secret["data"]) == {"api-token"}


def test_the_cluster_counts_as_rabbitmq_for_several_replicas(render):
    assert render(CLUSTER).deployment["spec"]["replicas"] == 3
    with pytest.raises(helm_python.HelmRenderError, match="embedded broker"):
        render({"replicaCount": 3})


def test_existing_secret_still_works_for_the_token_beside_the_cluster(render):
    values = deep_merge(CLUSTER, {"existingSecret": "lp-token"})
    rendered = render(values)
    env = env_of(rendered)
    assert "value" in env["LONGPOLL_BROKER"]
    assert env["LONGPOLL_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lp-token"
    assert not rendered.has("Secret")


def test_an_external_rabbitmq_by_url_stays(render):
    env = env_of(render(VALUE_SETS["rabbitmq"]))
    assert env["LONGPOLL_BROKER"]["valueFrom"]["secretKeyRef"]["key"] == "broker-url"
    assert "LONGPOLL_BROKER_USERNAME_FILE" not in env


def test_notes_name_the_cluster(render):
    notes = render(CLUSTER).notes
    assert f"RabbitmqCluster {NAME}" in notes
    assert f"{NAME}-default-user" in notes


@pytest.mark.parametrize(
    "bad",
    [
        {"replicas": 2},
        {"addresses": "dns"},
        {"vhost": "/"},
        {"persistence": {"storage": "ten gigs"}},
        {"name": "Bad_Name"},
        {"size": 3},
    ],
)
def test_schema_rejects_bad_cluster_values(chart, bad):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"rabbitmq": {"cluster": bad}})
