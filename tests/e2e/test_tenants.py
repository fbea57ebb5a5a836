"""Tenants, virtual clusters and the MSK-compatible control plane (issue 15).

- `weir tenants ...` and the operator tenant API (`/v1/tenants` on the admin listener).
- The MSK REST API on the admin listener, SigV4-signed with a tenant's root key, through
  boto3's `kafka` client and the AWS CLI: CreateClusterV2 (Serverless, IAM), ListClustersV2,
  DescribeClusterV2, GetBootstrapBrokers, DeleteCluster, tags; MSK's error classes.
- Kafka clients (confluent-kafka with the MSK signer over OAUTHBEARER, kafka-python with
  AWS_MSK_IAM and OAUTHBEARER) on a cluster's `BootstrapBrokerStringSaslIam` (SASL_SSL, CA
  `<data-dir>/tls/ca.pem`).
- Isolation between clusters and tenants; DeleteCluster; kill -9 and restart.

Most tests share one server (`svc`, module scope) and make their own tenants, so nothing one
test creates is visible to another; the kill -9 and admin-token tests start their own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType

from auth_helpers import (expect_auth_failure, kp_expect_auth_failure, kp_produce_consume,
                          uid)
from helpers import create_topic, produce_values
from tenant_helpers import (ACCOUNT_RE, TenantCli, TenantServer, aws_env, cluster_admin,
                            cluster_arn_re, forget_admins,
                            committed_offsets, consume_group, create_cluster, create_topics,
                            error_code, metadata, msk_client, new_cluster, produce_spread,
                            read_partition, topic_names, wait_active, wait_gone, wait_port)

UNKNOWN_TOPIC = KafkaError.UNKNOWN_TOPIC_OR_PART
AUTH_REFUSED = {"UnauthorizedException", "ForbiddenException"}


def _start(name: str, **kw) -> TenantServer:
    base = Path(tempfile.mkdtemp(prefix=f"weir-e2e-tenants-{name}-"))
    return TenantServer(base, **kw).start()


def _stop(server: TenantServer, failed: bool = False) -> None:
    server.stop()
    if failed or os.environ.get("WEIR_KEEP_DATA"):
        print(f"keeping weir data dir {server.base_dir}")
    else:
        shutil.rmtree(server.base_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def svc():
    # 40 ports: every test here creates a few clusters on this server
    server = _start("module", span=40)
    yield server
    forget_admins()
    _stop(server)


@pytest.fixture
def own_server(request):
    """`own_server(**kw)`: a TenantServer for one test (data kept if the test failed)."""
    servers: list[TenantServer] = []

    def make(**kw) -> TenantServer:
        s = _start(request.node.name[:30], **kw)
        servers.append(s)
        return s

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    forget_admins()
    for s in servers:
        _stop(s, failed)


def tenant_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tenants_of(listing) -> list[dict]:
    """The tenant entries of `GET /v1/tenants` / `weir tenants list --json`."""
    if isinstance(listing, dict):
        listing = listing.get("tenants")
    assert isinstance(listing, list), listing
    return listing


def arns(msk, **kw) -> set[str]:
    return {c["ClusterArn"] for c in msk.list_clusters_v2(**kw)["ClusterInfoList"]}


def unused_account(server: TenantServer) -> str:
    status, listing = server.api("GET", "/v1/tenants")
    taken = {t["account_id"] for t in tenants_of(listing)}
    assert status == 200, (status, listing)
    while True:
        acct = f"{int.from_bytes(os.urandom(6), 'big') % 10**12:012d}"
        if acct not in taken and acct != "000000000000":
            return acct


def expect_client_error(fn, codes: set[str], statuses: set[int]) -> ClientError:
    with pytest.raises(ClientError) as ei:
        fn()
    code, status = error_code(ei.value)
    assert code in codes and status in statuses, (code, status, ei.value.response)
    return ei.value


# -- tenants: CLI and operator API ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_tenant_cli_lifecycle(svc):
    cli = TenantCli(svc.admin_url)
    name = tenant_name("cli")
    created = cli.json("create", name)
    assert {"account_id", "access_key_id", "secret_access_key"} <= set(created), created
    acct, secret = created["account_id"], created["secret_access_key"]
    assert ACCOUNT_RE.match(acct), created
    assert created["access_key_id"] and secret and created["access_key_id"] != secret

    # listed and described, never with the secret
    p = cli.ok("list", "--json")
    assert secret not in p.stdout, "tenants list printed a secret"
    mine = [t for t in tenants_of(json.loads(p.stdout)) if t["account_id"] == acct]
    assert len(mine) == 1 and mine[0]["name"] == name and mine[0]["state"] == "ACTIVE", mine
    human = cli.ok("list")
    assert acct in human.stdout and name in human.stdout and secret not in human.stdout
    p = cli.ok("describe", acct, "--json")
    assert secret not in p.stdout
    d = json.loads(p.stdout)
    assert (d["account_id"], d["name"], d["state"]) == (acct, name, "ACTIVE"), d

    # the root key signs MSK API calls: a new tenant has no clusters
    msk = msk_client(svc, created)
    assert msk.list_clusters_v2()["ClusterInfoList"] == []

    # a second tenant of the same name is refused, and not created
    cli.fails("create", name)
    listed = tenants_of(cli.json("list"))
    assert [t["account_id"] for t in listed if t["name"] == name] == [acct], listed

    # suspend / resume
    cli.ok("suspend", acct)
    assert cli.json("describe", acct)["state"] == "SUSPENDED"
    cli.ok("resume", acct)
    assert cli.json("describe", acct)["state"] == "ACTIVE"
    assert msk.list_clusters_v2()["ClusterInfoList"] == []

    # delete is refused while the tenant still has a cluster
    c = new_cluster(svc, created, "cli-cluster", msk)
    cli.fails("delete", acct)
    assert cli.json("describe", acct)["state"] == "ACTIVE"
    assert arns(msk) == {c.arn}
    msk.delete_cluster(ClusterArn=c.arn)
    wait_gone(msk, c.arn)
    cli.ok("delete", acct)
    cli.fails("describe", acct)
    assert acct not in {t["account_id"] for t in tenants_of(cli.json("list"))}
    # the deleted tenant's root key no longer signs anything
    expect_client_error(lambda: msk.list_clusters_v2(), AUTH_REFUSED, {401, 403})
    # the name is free again
    again = cli.json("create", name)
    assert again["account_id"] != acct and again["access_key_id"] != created["access_key_id"]
    cli.ok("delete", again["account_id"])

    # unknown accounts, and a port that is not the admin API, fail with a message
    other = unused_account(svc)
    for cmd in ("describe", "suspend", "resume", "delete"):
        cli.fails(cmd, other)
    cli.fails("list", admin=f"http://127.0.0.1:{svc.port}")


@pytest.mark.timeout(60)
def test_tenant_cli_create_prints_the_root_key_once(svc):
    """Without --json, `create` prints the account id and a working root key pair."""
    cli = TenantCli(svc.admin_url)
    name = tenant_name("human")
    out = cli.ok("create", name).stdout
    (entry,) = [t for t in tenants_of(cli.json("list")) if t["name"] == name]
    acct = entry["account_id"]
    assert acct in out, out
    # some pair of the printed words is the root key: find it by using it
    words = [w for w in re.findall(r"[A-Za-z0-9/+=_-]{16,}", out) if w != acct][:8]
    working = None
    for akid in words:
        for secret in words:
            if akid == secret:
                continue
            try:
                msk_client(svc, {"access_key_id": akid, "secret_access_key": secret}
                           ).list_clusters_v2()
                working = (akid, secret)
                break
            except ClientError:
                continue
        if working:
            break
    assert working, f"no access key / secret pair in the output of `tenants create`:\n{out}"
    for p in (cli.ok("list"), cli.ok("describe", acct), cli.ok("describe", acct, "--json")):
        assert working[1] not in p.stdout, "the secret was printed again"
    cli.ok("delete", acct)


@pytest.mark.timeout(60)
def test_operator_tenant_http_api(svc):
    name = tenant_name("http")
    t0 = time.time() * 1000
    status, t = svc.api("POST", "/v1/tenants", {"name": name})
    assert status in (200, 201), (status, t)
    assert ACCOUNT_RE.match(t["account_id"]) and t["name"] == name and t["state"] == "ACTIVE", t
    assert t["access_key_id"] and t["secret_access_key"], t
    assert t0 - 60_000 <= t["created_ms"] <= time.time() * 1000 + 60_000, t
    acct, secret = t["account_id"], t["secret_access_key"]

    status, body = svc.api("POST", "/v1/tenants", {"name": name})
    assert status == 409, (status, body)
    for bad in ({}, {"name": ""}):
        status, body = svc.api("POST", "/v1/tenants", bad)
        assert 400 <= status < 500 and status != 409, (bad, status, body)

    status, listing = svc.api("GET", "/v1/tenants")
    assert status == 200, (status, listing)
    assert secret not in json.dumps(listing), "GET /v1/tenants returned a secret"
    entries = tenants_of(listing)
    assert all("secret_access_key" not in e for e in entries), entries
    (mine,) = [e for e in entries if e["account_id"] == acct]
    assert {"account_id", "name", "state", "created_ms"} <= set(mine), mine
    assert (mine["name"], mine["state"], mine["created_ms"]) == (name, "ACTIVE", t["created_ms"])
    assert len([e for e in entries if e["name"] == name]) == 1

    status, one = svc.api("GET", f"/v1/tenants/{acct}")
    assert status == 200 and one["account_id"] == acct and one["name"] == name, (status, one)
    assert secret not in json.dumps(one)
    assert svc.api("GET", f"/v1/tenants/{unused_account(svc)}")[0] == 404

    assert svc.api("POST", f"/v1/tenants/{acct}/suspend")[0] in (200, 204)
    assert svc.api("GET", f"/v1/tenants/{acct}")[1]["state"] == "SUSPENDED"
    assert svc.api("POST", f"/v1/tenants/{acct}/resume")[0] in (200, 204)
    assert svc.api("GET", f"/v1/tenants/{acct}")[1]["state"] == "ACTIVE"

    # 409 while it has a cluster
    msk = msk_client(svc, t)
    c = new_cluster(svc, t, "http-cluster", msk)
    status, body = svc.api("DELETE", f"/v1/tenants/{acct}")
    assert status == 409, (status, body)
    assert svc.api("GET", f"/v1/tenants/{acct}")[0] == 200
    msk.delete_cluster(ClusterArn=c.arn)
    wait_gone(msk, c.arn)
    assert svc.api("DELETE", f"/v1/tenants/{acct}")[0] in (200, 204)
    assert svc.api("GET", f"/v1/tenants/{acct}")[0] == 404
    assert svc.api("DELETE", f"/v1/tenants/{acct}")[0] == 404
    assert acct not in {e["account_id"] for e in tenants_of(svc.api("GET", "/v1/tenants")[1])}


@pytest.mark.timeout(60)
def test_admin_token_guards_the_tenant_api_not_the_msk_api(own_server):
    token = "tok-" + uuid.uuid4().hex
    server = own_server(admin_token=token)
    for given in ("", "wrong-" + token):
        status, body = server.api("GET", "/v1/tenants", token=given)
        assert status == 401, (given, status, body)
        status, body = server.api("POST", "/v1/tenants", {"name": "nope"}, token=given)
        assert status == 401, (given, status, body)
    assert server.api("GET", "/v1/tenants")[0] == 200
    assert "nope" not in json.dumps(server.api("GET", "/v1/tenants")[1])

    TenantCli(server.admin_url).fails("list")
    TenantCli(server.admin_url, token="wrong").fails("list")
    cli = TenantCli(server.admin_url, token=token)
    t = cli.json("create", tenant_name("tok"))
    # the MSK API is SigV4-signed with the tenant's key; it needs no operator token
    c = new_cluster(server, t, "token-server")
    assert arns(msk_client(server, t)) == {c.arn}
    assert c.port and server.in_range(c.port)


# -- the MSK control plane --------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_control_plane_two_tenants(svc):
    a, b = svc.create_tenant(tenant_name("alpha")), svc.create_tenant(tenant_name("beta"))
    ma, mb = msk_client(svc, a), msk_client(svc, b)
    assert ma.list_clusters_v2()["ClusterInfoList"] == []

    t0 = dt.datetime.now(dt.timezone.utc)
    resp = create_cluster(ma, "orders")
    assert cluster_arn_re(a["account_id"], "orders").match(resp["ClusterArn"]), resp["ClusterArn"]
    assert resp["ClusterName"] == "orders" and resp["State"] in ("CREATING", "ACTIVE"), resp
    started = time.monotonic()
    info = wait_active(ma, resp["ClusterArn"])
    assert time.monotonic() - started < 5, "CREATING -> ACTIVE took over 5 s"
    assert info["ClusterArn"] == resp["ClusterArn"] and info["ClusterName"] == "orders", info
    assert info["ClusterType"] == "SERVERLESS", info
    assert info["Serverless"]["VpcConfigs"][0]["SubnetIds"] == ["subnet-1"], info
    assert info["Serverless"]["ClientAuthentication"]["Sasl"]["Iam"]["Enabled"] is True, info
    if "CreationTime" in info:
        assert abs((info["CreationTime"] - t0).total_seconds()) < 600, info["CreationTime"]
    a_orders = resp["ClusterArn"]
    boot = ma.get_bootstrap_brokers(ClusterArn=a_orders)["BootstrapBrokerStringSaslIam"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", boot), boot
    ports = {int(boot.rsplit(":", 1)[1])}

    events = new_cluster(svc, a, "events", ma)
    b_orders = new_cluster(svc, b, "orders", mb)  # the same name in another account
    assert cluster_arn_re(b["account_id"], "orders").match(b_orders.arn), b_orders.arn
    assert cluster_arn_re(a["account_id"], "events").match(events.arn), events.arn
    ports |= {events.port, b_orders.port}
    assert len(ports) == 3 and all(svc.in_range(p) for p in ports), (ports, svc.cluster_ports)

    # each tenant lists and describes only its own
    assert arns(ma) == {a_orders, events.arn}
    assert arns(mb) == {b_orders.arn}
    for c in ma.list_clusters_v2()["ClusterInfoList"] + mb.list_clusters_v2()["ClusterInfoList"]:
        assert c["State"] == "ACTIVE" and c["ClusterType"] == "SERVERLESS", c
    assert arns(ma, ClusterNameFilter="events") == {events.arn}
    assert arns(ma, ClusterNameFilter="orders") == {a_orders}
    assert arns(mb, ClusterNameFilter="events") == set()
    assert mb.describe_cluster_v2(ClusterArn=b_orders.arn)["ClusterInfo"]["State"] == "ACTIVE"

    # the same name twice in one account
    with pytest.raises(ma.exceptions.ConflictException):
        create_cluster(ma, "orders")
    # bad input
    with pytest.raises(ma.exceptions.BadRequestException):
        create_cluster(ma, "bad name!")
    loose = msk_client(svc, a, validate=False)
    for name in ("", "x" * 65):
        with pytest.raises(loose.exceptions.BadRequestException):
            create_cluster(loose, name)
    assert arns(ma) == {a_orders, events.arn}

    # another tenant's ARN is not found, whatever the operation
    calls = {
        "describe_cluster_v2": lambda m: m.describe_cluster_v2(ClusterArn=a_orders),
        "get_bootstrap_brokers": lambda m: m.get_bootstrap_brokers(ClusterArn=a_orders),
        "delete_cluster": lambda m: m.delete_cluster(ClusterArn=a_orders),
        "list_tags_for_resource": lambda m: m.list_tags_for_resource(ResourceArn=a_orders),
        "tag_resource": lambda m: m.tag_resource(ResourceArn=a_orders, Tags={"x": "y"}),
        "untag_resource": lambda m: m.untag_resource(ResourceArn=a_orders, TagKeys=["x"]),
    }
    for op, call in calls.items():
        with pytest.raises(mb.exceptions.NotFoundException):
            call(mb)
    # A's cluster is untouched by B's attempts
    assert ma.describe_cluster_v2(ClusterArn=a_orders)["ClusterInfo"]["State"] == "ACTIVE"
    assert ma.list_tags_for_resource(ResourceArn=a_orders)["Tags"] == {}
    # an ARN of the right shape in B's own account that does not exist
    missing = re.sub(r"/[^/]+$", f"/{uuid.uuid4()}", b_orders.arn)
    with pytest.raises(mb.exceptions.NotFoundException):
        mb.describe_cluster_v2(ClusterArn=missing)

    # tags
    ma.tag_resource(ResourceArn=a_orders, Tags={"env": "test", "team": "data"})
    assert ma.list_tags_for_resource(ResourceArn=a_orders)["Tags"] == {"env": "test",
                                                                        "team": "data"}
    ma.untag_resource(ResourceArn=a_orders, TagKeys=["team"])
    assert ma.list_tags_for_resource(ResourceArn=a_orders)["Tags"] == {"env": "test"}
    assert mb.list_tags_for_resource(ResourceArn=b_orders.arn)["Tags"] == {}
    assert ma.list_tags_for_resource(ResourceArn=events.arn)["Tags"] == {}

    # delete
    d = ma.delete_cluster(ClusterArn=events.arn)
    assert d["ClusterArn"] == events.arn and d["State"] == "DELETING", d
    wait_gone(ma, events.arn)
    assert arns(ma) == {a_orders}
    assert arns(mb) == {b_orders.arn}
    with pytest.raises(ma.exceptions.NotFoundException):
        ma.get_bootstrap_brokers(ClusterArn=events.arn)
    with pytest.raises(ma.exceptions.NotFoundException):
        ma.delete_cluster(ClusterArn=events.arn)


@pytest.mark.timeout(60)
def test_control_plane_refuses_bad_credentials(svc):
    t = svc.create_tenant(tenant_name("creds"))
    c = new_cluster(svc, t, "creds")
    secret = t["secret_access_key"]
    wrong = ("A" if secret[0] != "A" else "B") + secret[1:]
    bad = msk_client(svc, t, secret=wrong)
    for call in (lambda: bad.list_clusters_v2(),
                 lambda: bad.describe_cluster_v2(ClusterArn=c.arn),
                 lambda: bad.delete_cluster(ClusterArn=c.arn),
                 lambda: create_cluster(bad, "sneaky")):
        expect_client_error(call, AUTH_REFUSED, {401, 403})
    unknown = msk_client(svc, t, access_key_id="WKIA" + uuid.uuid4().hex[:16].upper())
    expect_client_error(lambda: unknown.list_clusters_v2(), AUTH_REFUSED, {401, 403})
    # unsigned
    req = urllib.request.Request(svc.admin_url + "/api/v2/clusters", method="GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status in (401, 403), f"an unsigned ListClustersV2 answered {status}"
    # nothing changed
    good = msk_client(svc, t)
    assert arns(good) == {c.arn}
    assert good.describe_cluster_v2(ClusterArn=c.arn)["ClusterInfo"]["State"] == "ACTIVE"


@pytest.mark.timeout(60)
def test_suspended_tenant_is_refused(svc):
    t = svc.create_tenant(tenant_name("susp"))
    msk = msk_client(svc, t)
    c = new_cluster(svc, t, "susp", msk)
    topic = uid("s")
    create_topics(c.conf(), [topic])
    values = [b"before-suspend-%d" % i for i in range(3)]
    produce_spread(c.conf(), topic, values, 1)

    assert svc.api("POST", f"/v1/tenants/{t['account_id']}/suspend")[0] in (200, 204)
    e = expect_client_error(lambda: msk.list_clusters_v2(), {"ForbiddenException"}, {403})
    assert isinstance(e, msk.exceptions.ForbiddenException)
    with pytest.raises(msk.exceptions.ForbiddenException):
        create_cluster(msk, "while-suspended")
    expect_auth_failure(c.conf())

    assert svc.api("POST", f"/v1/tenants/{t['account_id']}/resume")[0] in (200, 204)
    assert arns(msk) == {c.arn}
    assert read_partition(c.conf(), topic, 0, 10) == values


@pytest.mark.timeout(90)
def test_aws_cli_list_clusters(svc, tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    aws = shutil.which("aws", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    if not aws:
        pytest.skip("the AWS CLI (`pip install awscli`) is not installed")
    a, b = svc.create_tenant(tenant_name("cli-a")), svc.create_tenant(tenant_name("cli-b"))
    a1, a2 = new_cluster(svc, a, "cli-one"), new_cluster(svc, a, "cli-two")
    b1 = new_cluster(svc, b, "cli-one")

    def run(key, *args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=key["access_key_id"],
                   AWS_SECRET_ACCESS_KEY=key["secret_access_key"],
                   AWS_CONFIG_FILE=str(tmp_path / "no-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
                   AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="", AWS_MAX_ATTEMPTS="1")
        return subprocess.run([aws, "kafka", *args, "--endpoint-url", svc.admin_url,
                               "--region", "us-east-1", "--output", "json"],
                              capture_output=True, text=True, timeout=40, env=env,
                              stdin=subprocess.DEVNULL)

    def listed(key) -> set[str]:
        p = run(key, "list-clusters-v2")
        assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
        return {c["ClusterArn"] for c in json.loads(p.stdout)["ClusterInfoList"]}

    assert listed(a) == {a1.arn, a2.arn}
    assert listed(b) == {b1.arn}
    p = run(a, "get-bootstrap-brokers", "--cluster-arn", a1.arn)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["BootstrapBrokerStringSaslIam"] == a1.bootstrap
    p = run(b, "describe-cluster-v2", "--cluster-arn", a1.arn)
    assert p.returncode != 0 and "NotFoundException" in p.stderr, (p.stdout, p.stderr)


# -- Kafka clients on a tenant cluster ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_confluent_idempotent_produce_and_group_consume(svc):
    t = svc.create_tenant(tenant_name("cf"))
    c = new_cluster(svc, t, "confluent")
    conf = c.conf()
    md = metadata(conf)
    assert md.brokers and all((br.host, br.port) == ("127.0.0.1", c.port)
                              for br in md.brokers.values()), (
        f"Metadata brokers {[(b.host, b.port) for b in md.brokers.values()]}, cluster port "
        f"{c.port}")
    topic, parts = uid("orders"), 3
    create_topics(conf, [topic], partitions=parts)
    values = [b"cf-%04d-" % i + b"x" * (i % 23) for i in range(300)]
    placed = produce_spread(conf, topic, values, parts, **{"enable.idempotence": True})
    for p in range(parts):
        assert sorted(o for q, o in placed if q == p) == list(range(len(values[p::parts])))

    group = uid("g")
    got = consume_group(conf, topic, group, len(values))
    assert Counter(got) == Counter(values), "the group read other records than were produced"
    assert committed_offsets(conf, group, topic, parts) == {
        p: len(values[p::parts]) for p in range(parts)}
    assert read_partition(conf, topic, 1, len(values)) == values[1::parts]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mechanism", ["AWS_MSK_IAM", "OAUTHBEARER"])
def test_kafka_python_on_a_tenant_cluster(svc, mechanism, monkeypatch, tmp_path, caplog):
    t = svc.create_tenant(tenant_name("kp"))
    other = svc.create_tenant(tenant_name("kp-other"))
    c = new_cluster(svc, t, "kp-" + mechanism.lower().replace("_", "-"))
    topic = uid("kp")
    create_topics(c.conf(), [topic])
    if mechanism == "AWS_MSK_IAM":
        aws_env(monkeypatch, tmp_path, t)
    values = [b"kafka-python-%s-%d" % (mechanism.encode(), i) for i in range(40)]
    assert kp_produce_consume(c.kp_conf(mechanism), topic, values) == values

    # the other tenant's key does not authenticate here
    if mechanism == "AWS_MSK_IAM":
        aws_env(monkeypatch, tmp_path, other)
        conf = c.kp_conf(mechanism)
    else:
        conf = c.kp_conf(mechanism, key=other)
    kp_expect_auth_failure(conf, caplog, svc, mechanism)


# -- isolation ----------------------------------------------------------------------------------
def _groups(conf: dict) -> set[str]:
    adm = cluster_admin(conf)
    res = adm.list_consumer_groups(request_timeout=10).result(timeout=15)
    return {g.group_id for g in res.valid}


@pytest.mark.timeout(90)
def test_cluster_isolation(svc):
    a, b = svc.create_tenant(tenant_name("iso-a")), svc.create_tenant(tenant_name("iso-b"))
    a1 = new_cluster(svc, a, "iso")
    a2 = new_cluster(svc, a, "iso-second")  # the same account, another cluster
    b1 = new_cluster(svc, b, "iso")         # the same cluster name, another account
    default = svc.default_conf
    shared, a_only, b_only, d_only = "shared-topic", uid("a-only"), uid("b-only"), uid("d-only")
    create_topics(a1.conf(), [shared, a_only])
    create_topics(b1.conf(), [shared, b_only])
    create_topic(svc.bootstrap, shared)
    create_topic(svc.bootstrap, d_only)

    # the same topic name: independent logs
    va = [b"a1-%d" % i for i in range(5)]
    vb = [b"b1-%d" % i for i in range(3)]
    produce_spread(a1.conf(), shared, va, 1)
    produce_spread(b1.conf(), shared, vb, 1)
    produce_values(svc.bootstrap, shared, [b"default-0"])
    produce_spread(a1.conf(), a_only, [b"only-a-0", b"only-a-1"], 1)
    assert read_partition(a1.conf(), shared, 0, 20) == va
    assert read_partition(b1.conf(), shared, 0, 20) == vb
    assert read_partition(default, shared, 0, 20) == [b"default-0"]

    # Metadata: each cluster lists its own topics only
    ta1, ta2, tb1, td = (topic_names(a1.conf()), topic_names(a2.conf()), topic_names(b1.conf()),
                         topic_names(default))
    assert {shared, a_only} <= ta1 and not {b_only, d_only} & ta1, ta1
    assert {shared, b_only} <= tb1 and not {a_only, d_only} & tb1, tb1
    assert not {shared, a_only, b_only, d_only} & ta2, ta2
    assert {shared, d_only} <= td and not {a_only, b_only} & td, td
    adm_b = cluster_admin(b1.conf())
    t = adm_b.list_topics(topic=a_only, timeout=10).topics.get(a_only)
    assert t is None or (t.error is not None and t.error.code() == UNKNOWN_TOPIC
                         and not t.partitions), (t, getattr(t, "error", None))
    assert a_only not in topic_names(b1.conf()), "asking for the topic by name created it"

    # each cluster answers with its own address and its own cluster id
    ids = {}
    for name, c in (("a1", a1), ("a2", a2), ("b1", b1)):
        md = metadata(c.conf())
        assert md.brokers and all((br.host, br.port) == ("127.0.0.1", c.port)
                                  for br in md.brokers.values()), (
            name, [(br.host, br.port) for br in md.brokers.values()], c.port)
        adm = cluster_admin(c.conf())
        desc = adm.describe_cluster(request_timeout=10).result(timeout=15)
        assert desc.cluster_id == md.cluster_id, (desc.cluster_id, md.cluster_id)
        assert all(n.port == c.port for n in desc.nodes), [(n.host, n.port) for n in desc.nodes]
        ids[name] = md.cluster_id
    ids["default"] = metadata(default).cluster_id
    assert all(ids.values()) and len(set(ids.values())) == 4, ids

    # groups: the same group name in two clusters is two groups
    assert consume_group(a1.conf(), shared, "g-shared", len(va)) == va
    assert consume_group(b1.conf(), shared, "g-shared", len(vb)) == vb
    assert committed_offsets(a1.conf(), "g-shared", shared, 1) == {0: len(va)}
    assert committed_offsets(b1.conf(), "g-shared", shared, 1) == {0: len(vb)}
    consume_group(a1.conf(), a_only, "g-a-only", 2)
    ga1, ga2, gb1, gd = (_groups(a1.conf()), _groups(a2.conf()), _groups(b1.conf()),
                         _groups(default))
    assert {"g-shared", "g-a-only"} <= ga1, ga1
    assert "g-shared" in gb1 and "g-a-only" not in gb1, gb1
    assert not {"g-shared", "g-a-only"} & ga2, ga2
    assert not {"g-shared", "g-a-only"} & gd, gd
    # OffsetFetch of A's group in B's cluster (on B's topic of the same name): nothing
    assert all(o < 0 for o in committed_offsets(b1.conf(), "g-a-only", shared, 1).values())

    # DescribeConfigs of a topic of the other cluster: unknown
    res = ConfigResource(ResourceType.TOPIC, a_only)
    adm_a = cluster_admin(a1.conf())
    assert adm_a.describe_configs([res], request_timeout=10)[res].result(timeout=15)
    fs = adm_b.describe_configs([res], request_timeout=10)
    with pytest.raises(KafkaException) as ei:
        fs[res].result(timeout=15)
    assert ei.value.args[0].code() == UNKNOWN_TOPIC, ei.value

    # keys of one tenant do not authenticate to the other's clusters
    expect_auth_failure(a1.conf(key=b))
    expect_auth_failure(b1.conf(key=a))
    # ... while one account's key reaches all its clusters
    assert isinstance(topic_names(a2.conf(key=a)), set)


# -- DeleteCluster -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_delete_cluster_removes_topics_and_closes_the_port(svc):
    t = svc.create_tenant(tenant_name("del"))
    msk = msk_client(svc, t)
    keep = new_cluster(svc, t, "keeper", msk)
    c = new_cluster(svc, t, "doomed", msk)
    topic = "doomed-topic"
    create_topics(c.conf(), [topic])
    create_topics(keep.conf(), [topic])
    produce_spread(c.conf(), topic, [b"old-%d" % i for i in range(10)], 1)
    produce_spread(keep.conf(), topic, [b"kept"], 1)
    consume_group(c.conf(), topic, "g-doomed", 10)

    resp = msk.delete_cluster(ClusterArn=c.arn)
    assert resp["ClusterArn"] == c.arn and resp["State"] == "DELETING", resp
    wait_gone(msk, c.arn)
    took = wait_port(c.port, False, 10)
    assert arns(msk) == {keep.arn}
    with pytest.raises(msk.exceptions.NotFoundException):
        msk.get_bootstrap_brokers(ClusterArn=c.arn)

    # a new cluster of the same name starts empty
    c2 = new_cluster(svc, t, "doomed", msk)
    assert c2.arn != c.arn and cluster_arn_re(t["account_id"], "doomed").match(c2.arn)
    assert topic not in topic_names(c2.conf()), "the deleted cluster's topic came back"
    assert "g-doomed" not in _groups(c2.conf())
    create_topics(c2.conf(), [topic])
    assert produce_spread(c2.conf(), topic, [b"new-0"], 1) == [(0, 0)]
    assert read_partition(c2.conf(), topic, 0, 20) == [b"new-0"]
    # the other cluster of the account is untouched
    assert read_partition(keep.conf(), topic, 0, 20) == [b"kept"]
    print(f"port {c.port} closed {took:.2f}s after the cluster was gone")


# -- kill -9 --------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_kill9_restart_keeps_tenant_cluster(own_server):
    server = own_server()
    t = server.create_tenant(tenant_name("dur"))
    msk = msk_client(server, t)
    c = new_cluster(server, t, "durable", msk)
    gone = new_cluster(server, t, "gone", msk)
    msk.delete_cluster(ClusterArn=gone.arn)
    wait_gone(msk, gone.arn)
    msk.tag_resource(ResourceArn=c.arn, Tags={"keep": "me"})
    topic, parts = uid("dur"), 2
    create_topics(c.conf(), [topic], partitions=parts)
    values = [b"durable-%04d" % i for i in range(200)]
    produce_spread(c.conf(), topic, values, parts, **{"enable.idempotence": True})
    consume_group(c.conf(), topic, "g-dur", len(values))
    cluster_id = metadata(c.conf()).cluster_id

    server.kill9()
    server.start()
    msk = msk_client(server, t)
    info = wait_active(msk, c.arn)
    assert info["ClusterName"] == "durable"
    assert arns(msk) == {c.arn}, "clusters after restart"
    with pytest.raises(msk.exceptions.NotFoundException):
        msk.describe_cluster_v2(ClusterArn=gone.arn)
    assert msk.get_bootstrap_brokers(ClusterArn=c.arn)["BootstrapBrokerStringSaslIam"] == \
        c.bootstrap, "the cluster moved to another port"
    assert msk.list_tags_for_resource(ResourceArn=c.arn)["Tags"] == {"keep": "me"}
    wait_port(c.port, True, 20)
    status, one = server.api("GET", f"/v1/tenants/{t['account_id']}")
    assert status == 200 and one["state"] == "ACTIVE", (status, one)

    conf = c.conf()
    assert topic in topic_names(conf)
    assert metadata(conf).cluster_id == cluster_id
    for p in range(parts):
        assert read_partition(conf, topic, p, len(values)) == values[p::parts], f"partition {p}"
    assert committed_offsets(conf, "g-dur", topic, parts) == {
        p: len(values[p::parts]) for p in range(parts)}
    assert produce_spread(conf, topic, [b"after-restart"], 1) == [(0, len(values[0::parts]))]
