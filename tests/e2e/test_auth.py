"""Authentication and authorization: SASL listeners (OAUTHBEARER with AWS MSK IAM tokens,
AWS_MSK_IAM, SCRAM-SHA-256/512) over TLS, IAM-style policies, and the `weir auth` command.

Most tests share one server (`cluster`) with four listeners: the conftest-style PLAINTEXT
`--listen` (unauthenticated, used to set up topics), SASL_SSL and SASL_PLAINTEXT with the
default mechanisms, and a SASL_SSL listener restricted to SCRAM-SHA-512+PLAIN. Every test uses
its own principals and topics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import NewTopic

from auth_helpers import (CLUSTER_ARN, CLUSTER_AUTHZ, DEFAULT_MECHANISMS, ErrorLog,
                          GROUP_AUTHZ, REGION, TOPIC_AUTHZ, UNSUPPORTED_SASL_MECHANISM,
                          OAuthTokens, ServerPool, WeirAuth, admin_client, allow,
                          base_conf, consume_errors, consume_values, deny, expect_auth_failure,
                          kp_conf, kp_expect_auth_failure, kp_produce_consume,
                          list_topic_names, listening_ports, oauth_conf, policy,
                          presigned_token, produce, produce_ok, producer_consumer_policy,
                          SASL_AUTHENTICATION_FAILED, msk_iam_payload, raw_request,
                          raw_sasl_authenticate, tls_socket,
                          sasl_handshake, scram_conf, signer_oauth, signer_token,
                          tamper_signature, topic_arn, uid, wait_topic_visible)
from conftest import weir_bin
import kproto
from helpers import create_topic

RESTRICTED = ("SCRAM-SHA-512", "PLAIN")


@pytest.fixture(scope="module")
def cluster():
    pool = ServerPool("auth-module")
    server = pool.start(["SASL_SSL", "SASL_PLAINTEXT", ("SASL_SSL", RESTRICTED)])
    yield server
    pool.close()


@pytest.fixture
def pool(request):
    p = ServerPool(request.node.name)
    yield p
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    p.close(keep=failed)


@pytest.fixture
def auth(cluster, tmp_path) -> WeirAuth:
    return WeirAuth(cluster.admin_url, tmp_path)


def full_access_principal(auth: WeirAuth, prefix: str = "app") -> tuple[str, dict]:
    """A principal allowed everything on the cluster, with a fresh access key."""
    principal = uid(prefix)
    auth.policy_put(principal, "all", policy(allow("kafka-cluster:*", "*")))
    return principal, auth.key_create(principal)


def oauth_lists_topics(cluster, tokens: OAuthTokens) -> set[str]:
    names = list_topic_names(oauth_conf(cluster, tokens))
    assert tokens.calls >= 1, "oauth_cb was never called"
    return names


# -- 1. OAUTHBEARER with the AWS MSK signer ---------------------------------------------------
def test_oauthbearer_msk_signer_produce_consume(cluster, auth):
    principal = uid("orders-app")
    key = auth.key_create(principal)
    auth.policy_put(principal, "orders-rw", producer_consumer_policy("orders-*", "g-*"))
    tokens = signer_oauth(key)
    conf = oauth_conf(cluster, tokens)

    # CreateTopic is allowed on orders-* (kafka-cluster:*Topic*)
    topic = uid("orders")
    adm = admin_client(conf)  # kept referenced: a collected handle fails its futures
    fs = adm.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                           operation_timeout=20, request_timeout=20)
    fs[topic].result(timeout=20)
    wait_topic_visible(conf, topic)
    assert topic in list_topic_names(base_conf(cluster.bootstrap, "PLAINTEXT", None, None))

    values = [b"oauth-record-%03d-" % i + b"v" * (i % 17) for i in range(60)]
    offsets = produce_ok(conf, topic, values, **{"enable.idempotence": True})
    assert sorted(offsets) == list(range(len(values)))
    got = consume_values(conf, topic, len(values), group=uid("g-orders"))
    assert got == values
    assert tokens.calls >= 1, "oauth_cb was never called"


# -- 2. refused IAM tokens ----------------------------------------------------------------------
def _past(minutes: int) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)


REFUSALS = ["expired", "wrong_secret", "tampered", "other_region", "other_region_scope",
            "revoked", "unknown_key"]


@pytest.mark.parametrize("case", REFUSALS)
def test_oauthbearer_refused(cluster, auth, case):
    principal, key = full_access_principal(auth, "refuse")
    akid, secret = key["access_key_id"], key["secret_access_key"]

    # control: the same key, with a token built the same way, is accepted
    if case in ("expired", "tampered", "other_region_scope"):
        good = OAuthTokens(lambda: presigned_token(akid, secret))
    else:
        good = signer_oauth(key)
    assert isinstance(oauth_lists_topics(cluster, good), set)

    if case == "expired":
        # 30 minutes old: past its 900 s lifetime, and past any 5-minute clock-skew allowance
        bad = OAuthTokens(lambda: presigned_token(akid, secret, signed_at=_past(30)))
    elif case == "wrong_secret":
        wrong = ("A" if secret[0] != "A" else "B") + secret[1:]
        bad = OAuthTokens(lambda: signer_token(akid, wrong))
    elif case == "tampered":
        bad = OAuthTokens(lambda: tamper_signature(presigned_token(akid, secret)))
    elif case == "other_region":
        assert REGION != "us-west-2"
        bad = OAuthTokens(lambda: signer_token(akid, secret, "us-west-2"))
    elif case == "other_region_scope":
        # the right host (kafka.us-east-1.amazonaws.com), signed for us-west-2
        bad = OAuthTokens(lambda: presigned_token(akid, secret, "us-west-2", host_region=REGION))
    elif case == "revoked":
        auth.key_revoke(akid)
        bad = signer_oauth(key)
    elif case == "unknown_key":
        bad = OAuthTokens(lambda: signer_token("AKIA" + akid[4:][::-1].upper() + "X", secret))
    expect_auth_failure(oauth_conf(cluster, bad))
    assert bad.calls >= 1


def test_principal_without_policy_cannot_connect(cluster, auth):
    principal = uid("nopolicy")
    key = auth.key_create(principal)
    expect_auth_failure(oauth_conf(cluster, signer_oauth(key)))
    # the same key works once a policy allows Connect
    auth.policy_put(principal, "connect", policy(allow("kafka-cluster:Connect", CLUSTER_ARN)))
    oauth_lists_topics(cluster, signer_oauth(key))
    # and fails again when the policy is deleted
    listed = auth.policy_list(principal)
    assert "connect" in json.dumps(listed), listed
    auth.policy_delete(principal, "connect")
    assert '"connect"' not in auth.policy_listing(principal)
    expect_auth_failure(oauth_conf(cluster, signer_oauth(key)))


# -- 3. authorization -------------------------------------------------------------------------
def test_produce_only_policy(cluster, auth):
    prefix = uid("po")
    principal = uid("producer")
    key = auth.key_create(principal)
    auth.policy_put(principal, "produce-only", policy(
        allow("kafka-cluster:Connect", CLUSTER_ARN),
        allow(["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
              topic_arn(f"{prefix}-*")),
    ))
    topic = f"{prefix}-events"
    create_topic(cluster.bootstrap, topic)
    conf = oauth_conf(cluster, signer_oauth(key))

    values = [b"produce-only-%d" % i for i in range(20)]
    assert sorted(produce_ok(conf, topic, values)) == list(range(20))

    # consuming in a group: no DescribeGroup/AlterGroup/ReadData
    codes, got = consume_errors(conf, topic, uid("grp"), {TOPIC_AUTHZ, GROUP_AUTHZ})
    assert got == [], f"read {len(got)} records without ReadData"
    assert {TOPIC_AUTHZ, GROUP_AUTHZ} & set(codes), f"no authorization error; saw {codes}"

    # an idempotent producer needs WriteDataIdempotently on the cluster: librdkafka's
    # InitProducerId fails with CLUSTER_AUTHORIZATION_FAILED, a fatal error for the producer
    # (confluent-kafka raises the fatal error from produce()/poll() and passes it to error_cb)
    idem_errors = ErrorLog()
    idem = Producer({**conf, "enable.idempotence": True, "acks": "all",
                     "error_cb": idem_errors})
    reports = []
    try:
        idem.produce(topic, b"idem", partition=0, on_delivery=lambda e, m: reports.append(e))
    except KafkaException as e:  # the fatal error already happened: _FATAL
        reports.append(e.args[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            e.code() == CLUSTER_AUTHZ for e in reports + idem_errors.errors):
        try:
            idem.poll(0.2)
        except KafkaException as e:  # poll() raises the fatal error with its cause
            reports.append(e.args[0])
    assert reports and all(r is not None for r in reports), "idempotent produce succeeded"
    assert any(e.code() == CLUSTER_AUTHZ for e in reports + idem_errors.errors), (
        f"{reports} {idem_errors}")

    # creating a topic: no CreateTopic
    new = f"{prefix}-new"
    adm = admin_client(conf)  # kept referenced: a collected handle fails its futures
    fs = adm.create_topics([NewTopic(new, num_partitions=1, replication_factor=1)],
                           operation_timeout=15, request_timeout=15)
    with pytest.raises(KafkaException) as ei:
        fs[new].result(timeout=20)
    assert ei.value.args[0].code() == TOPIC_AUTHZ, ei.value
    assert new not in list_topic_names(base_conf(cluster.bootstrap, "PLAINTEXT", None, None))


def test_deny_statement_overrides_allow(cluster, auth):
    principal = uid("denied")
    key = auth.key_create(principal)
    open_topic, secret_topic = uid("open"), uid("secret")
    auth.policy_put(principal, "mostly-everything", policy(
        allow("kafka-cluster:*", [CLUSTER_ARN, "arn:aws:kafka:*:*:topic/*",
                                  "arn:aws:kafka:*:*:group/*"]),
        deny(["kafka-cluster:WriteData", "kafka-cluster:ReadData"], topic_arn(secret_topic)),
    ))
    create_topic(cluster.bootstrap, open_topic)
    create_topic(cluster.bootstrap, secret_topic)
    # records written by an unrestricted PLAINTEXT client
    produce_ok(base_conf(cluster.bootstrap, "PLAINTEXT", None, None), secret_topic,
               [b"classified-1", b"classified-2"])
    conf = oauth_conf(cluster, signer_oauth(key))

    assert produce_ok(conf, open_topic, [b"a", b"b", b"c"]) == [0, 1, 2]
    assert consume_values(conf, open_topic, 3, group=uid("grp")) == [b"a", b"b", b"c"]

    offsets, errors = produce(conf, secret_topic, [b"leak"], timeout=20)
    assert offsets == [], "WriteData was denied, yet the record was written"
    assert [e.code() for e in errors] == [TOPIC_AUTHZ], [(e.code(), e.str()) for e in errors]

    codes, got = consume_errors(conf, secret_topic, None, {TOPIC_AUTHZ})
    assert got == [], "ReadData was denied, yet records were read"
    assert TOPIC_AUTHZ in codes, f"no TOPIC_AUTHORIZATION_FAILED; saw {codes}"
    # the secret topic still holds only the two records (the denied write did not land)
    plain = base_conf(cluster.bootstrap, "PLAINTEXT", None, None)
    assert consume_values(plain, secret_topic, 2) == [b"classified-1", b"classified-2"]


def test_metadata_hides_topics_the_principal_cannot_describe(cluster, auth):
    prefix = uid("md")
    visible, denied, unlisted = f"{prefix}-visible", f"{prefix}-denied", uid("unlisted")
    exact, other_account = f"{prefix}x-exact", f"{prefix}x-other-account"
    for t in (visible, denied, unlisted, exact, other_account):
        create_topic(cluster.bootstrap, t)
    principal = uid("describer")
    key = auth.key_create(principal)
    auth.policy_put(principal, "describe", policy(
        allow("kafka-cluster:Connect", CLUSTER_ARN),
        allow("kafka-cluster:DescribeTopic", topic_arn(f"{prefix}-*")),
        deny("kafka-cluster:DescribeTopic", topic_arn(denied)),
        # full ARNs with the server's defaults: region us-east-1, account 000000000000,
        # cluster name weir; the wrong account must not match
        allow("kafka-cluster:DescribeTopic",
              f"arn:aws:kafka:{REGION}:000000000000:topic/weir/*/{exact}"),
        allow("kafka-cluster:DescribeTopic",
              f"arn:aws:kafka:{REGION}:111111111111:topic/weir/*/{other_account}"),
    ))
    everything = list_topic_names(base_conf(cluster.bootstrap, "PLAINTEXT", None, None))
    assert {visible, denied, unlisted, exact, other_account} <= everything

    seen = list_topic_names(oauth_conf(cluster, signer_oauth(key)))
    assert visible in seen and exact in seen, sorted(seen)
    assert denied not in seen, "a topic with DescribeTopic denied is listed"
    assert unlisted not in seen, "a topic outside the policy is listed"
    assert other_account not in seen, "an ARN with another account matched"

    # asking for the hidden topic by name does not reveal it either
    md = admin_client(oauth_conf(cluster, signer_oauth(key))).list_topics(topic=denied, timeout=10)
    t = md.topics.get(denied)
    assert t is None or (t.error is not None and t.error.code() == TOPIC_AUTHZ
                         and not t.partitions), (t, getattr(t, "error", None))


# -- 4. SCRAM -----------------------------------------------------------------------------------
def scram_user(auth: WeirAuth, topic_prefix: str, mechanism: str | None = None,
               stdin: bool = False) -> tuple[str, str]:
    user, password = uid("scram"), "pw-" + os.urandom(9).hex()
    auth.scram_set(user, password, mechanism=mechanism, stdin=stdin)
    auth.policy_put(user, "rw", producer_consumer_policy(f"{topic_prefix}-*"))
    return user, password


def test_scram_sha512_confluent(cluster, auth):
    prefix = uid("s512")
    user, password = scram_user(auth, prefix)
    topic = f"{prefix}-t"
    create_topic(cluster.bootstrap, topic)
    conf = scram_conf(cluster, user, password, "SCRAM-SHA-512")
    values = [b"scram-512-%d" % i for i in range(40)]
    produce_ok(conf, topic, values)
    assert consume_values(conf, topic, len(values), group=uid("grp")) == values


def test_scram_sha512_kafka_python(cluster, auth):
    prefix = uid("kp512")
    user, password = scram_user(auth, prefix)
    topic = f"{prefix}-t"
    create_topic(cluster.bootstrap, topic)
    conf = kp_conf(cluster, "SCRAM-SHA-512", sasl_plain_username=user,
                   sasl_plain_password=password)
    values = [b"kafka-python-scram-%d" % i for i in range(30)]
    assert kp_produce_consume(conf, topic, values) == values


def test_scram_sha256_only_over_sasl_plaintext(cluster, auth):
    prefix = uid("s256")
    user, password = scram_user(auth, prefix, mechanism="SCRAM-SHA-256", stdin=True)
    topic = f"{prefix}-t"
    create_topic(cluster.bootstrap, topic)
    conf = scram_conf(cluster, user, password, "SCRAM-SHA-256", protocol="SASL_PLAINTEXT")
    values = [b"scram-256-%d" % i for i in range(25)]
    produce_ok(conf, topic, values)
    assert consume_values(conf, topic, len(values)) == values
    # only SCRAM-SHA-256 credentials were stored for this user
    expect_auth_failure(scram_conf(cluster, user, password, "SCRAM-SHA-512",
                                   protocol="SASL_PLAINTEXT"))


def test_scram_wrong_password_refused(cluster, auth, caplog):
    user, password = scram_user(auth, uid("swp"))
    list_topic_names(scram_conf(cluster, user, password))  # control
    expect_auth_failure(scram_conf(cluster, user, password + "x"))
    expect_auth_failure(scram_conf(cluster, uid("nobody"), password))
    kp_expect_auth_failure(kp_conf(cluster, "SCRAM-SHA-512", sasl_plain_username=user,
                                   sasl_plain_password="not-" + password), caplog, cluster,
                           "SCRAM-SHA-512")


def test_scram_list_and_delete(cluster, auth):
    user, password = scram_user(auth, uid("sld"))
    p = auth.run("scram", "list")
    assert p.returncode == 0, p.stderr
    assert user in p.stdout and password not in p.stdout, p.stdout
    json.loads(p.stdout)
    list_topic_names(scram_conf(cluster, user, password, "SCRAM-SHA-256"))
    auth.scram_delete(user)
    assert user not in json.dumps(auth.scram_list())
    expect_auth_failure(scram_conf(cluster, user, password, "SCRAM-SHA-512"))


# -- 5. AWS_MSK_IAM with kafka-python -----------------------------------------------------------
def _aws_env(monkeypatch, tmp_path, key: dict, region: str = REGION):
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)


def test_aws_msk_iam_kafka_python(cluster, auth, monkeypatch, tmp_path):
    prefix = uid("msk")
    principal = uid("msk-app")
    key = auth.key_create(principal)
    auth.policy_put(principal, "rw", producer_consumer_policy(f"{prefix}-*"))
    topic = f"{prefix}-t"
    create_topic(cluster.bootstrap, topic)
    _aws_env(monkeypatch, tmp_path, key)
    values = [b"msk-iam-%d" % i for i in range(30)]
    assert kp_produce_consume(kp_conf(cluster, "AWS_MSK_IAM"), topic, values) == values


def test_aws_msk_iam_kafka_python_refused(cluster, auth, monkeypatch, tmp_path, caplog):
    principal, key = full_access_principal(auth, "msk-bad")
    secret = key["secret_access_key"]
    wrong = ("Z" if secret[0] != "Z" else "Y") + secret[1:]  # always differs from the real one
    _aws_env(monkeypatch, tmp_path, {**key, "secret_access_key": wrong})
    kp_expect_auth_failure(kp_conf(cluster, "AWS_MSK_IAM"), caplog, cluster, "AWS_MSK_IAM")
    _aws_env(monkeypatch, tmp_path, key, region="eu-west-1")
    kp_expect_auth_failure(kp_conf(cluster, "AWS_MSK_IAM"), caplog, cluster, "AWS_MSK_IAM")


def test_aws_msk_iam_sasl_authenticate_responses(cluster, auth):
    """The protocol itself: a bad AWS_MSK_IAM payload gets SASL_AUTHENTICATION_FAILED (58) in
    the SaslAuthenticate response; a good one authenticates the connection for Metadata."""
    principal, key = full_access_principal(auth, "msk-raw")
    port = cluster.listener("SASL_SSL").port
    with tls_socket(port, cluster.ca_path) as s:
        err, msg = raw_sasl_authenticate(
            s, "AWS_MSK_IAM", msk_iam_payload(key["access_key_id"], "wrong-secret"))
        assert err == SASL_AUTHENTICATION_FAILED, (err, msg)
    with tls_socket(port, cluster.ca_path) as s:
        err, msg = raw_sasl_authenticate(
            s, "AWS_MSK_IAM", msk_iam_payload(key["access_key_id"], key["secret_access_key"]))
        assert err == 0, (err, msg)
        r = raw_request(s, kproto.METADATA, 1, kproto.i32(-1), 3)
        assert r is not None, "connection closed after a successful authentication"
        brokers = r.i32()
        assert brokers >= 1


# -- 6. PLAINTEXT off -------------------------------------------------------------------------
def test_only_sasl_ssl_listener_no_plaintext(pool, tmp_path):
    server = pool.start(["SASL_SSL"], plaintext=False)
    sasl = server.listener("SASL_SSL")
    assert listening_ports(server.pid) - {server.admin_port} == {sasl.port}, (
        f"weir listens on {sorted(listening_ports(server.pid))}; expected only the SASL_SSL "
        f"port {sasl.port} and the admin port {server.admin_port}")

    # a PLAINTEXT client on the TLS port gets nowhere
    with pytest.raises(KafkaException):
        list_topic_names(base_conf(sasl.address, "PLAINTEXT", None, None), timeout=5)
    # TLS without SASL is refused too
    with pytest.raises(KafkaException):
        list_topic_names(base_conf(sasl.address, "SSL", server.ca_path, None), timeout=5)

    # control: with SCRAM credentials the same port works
    auth = WeirAuth(server.admin_url, tmp_path)
    user, password = scram_user(auth, "only")
    conf = scram_conf(server, user, password)
    topic = "only-tls"
    adm = admin_client(conf)  # kept referenced: a collected handle fails its futures
    fs = adm.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                           operation_timeout=20, request_timeout=20)
    fs[topic].result(timeout=20)
    wait_topic_visible(conf, topic)
    produce_ok(conf, topic, [b"tls-only"])
    assert consume_values(conf, topic, 1) == [b"tls-only"]


def test_self_signed_tls_files_are_generated_once_and_reused(pool):
    server = pool.start(["SASL_SSL"])
    tls = Path(server.data_dir) / "tls"
    assert {"ca.pem", "server.pem", "server.key"} <= {p.name for p in tls.iterdir()}
    before = {n: (tls / n).read_bytes() for n in ("ca.pem", "server.pem", "server.key")}
    port = server.listener("SASL_SSL").port

    def handshake(hostname: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=hostname) as s:
                return s.getpeercert(binary_form=True)

    first = handshake("127.0.0.1")
    assert handshake("localhost") == first  # SANs: localhost and 127.0.0.1
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("not-the-server.example")

    server.restart()
    after = {n: (tls / n).read_bytes() for n in ("ca.pem", "server.pem", "server.key")}
    assert after == before, "the self-signed TLS files were regenerated on restart"
    assert handshake("127.0.0.1") == first


# -- 7. access keys -----------------------------------------------------------------------------
def test_key_list_has_no_secrets(cluster, auth):
    principal = uid("lister")
    k1, k2 = auth.key_create(principal), auth.key_create(principal)
    other = auth.key_create(uid("other"))
    assert len({k1["access_key_id"], k2["access_key_id"], other["access_key_id"]}) == 3
    assert len({k1["secret_access_key"], k2["secret_access_key"]}) == 2

    p = auth.run("key", "list")
    assert p.returncode == 0, p.stderr
    for k in (k1, k2, other):
        assert k["access_key_id"] in p.stdout
        assert k["secret_access_key"] not in p.stdout, "key list printed a secret"
    everything = json.loads(p.stdout)
    assert all("secret_access_key" not in entry for entry in everything)

    mine = auth.key_list(principal)
    assert {e["access_key_id"] for e in mine} == {k1["access_key_id"], k2["access_key_id"]}
    for e in mine:
        assert set(e) >= {"access_key_id", "principal", "status", "created_ms"}, e
        assert e["principal"] == principal
        assert abs(e["created_ms"] - time.time() * 1000) < 10 * 60 * 1000, e
        assert not any(k["secret_access_key"] in json.dumps(e) for k in (k1, k2))


def test_key_rotate(cluster, auth):
    principal, old = full_access_principal(auth, "rotor")
    oauth_lists_topics(cluster, signer_oauth(old))
    new = auth.key_rotate(old["access_key_id"])
    assert new["principal"] == principal
    assert new["access_key_id"] != old["access_key_id"]
    assert new["secret_access_key"] != old["secret_access_key"]

    expect_auth_failure(oauth_conf(cluster, signer_oauth(old)))
    oauth_lists_topics(cluster, signer_oauth(new))

    listed = {e["access_key_id"]: e for e in auth.key_list(principal)}
    assert new["access_key_id"] in listed
    status_new = listed[new["access_key_id"]]["status"]
    assert old["access_key_id"] not in listed or listed[old["access_key_id"]]["status"] != status_new


def test_key_commands_fail_with_a_message(cluster, auth):
    auth.fails("key", "revoke", "AKIADOESNOTEXIST0000")
    auth.fails("key", "rotate", "AKIADOESNOTEXIST0000")
    p = subprocess.run([str(weir_bin()), "auth", "key", "list", "--admin",
                        f"http://127.0.0.1:{cluster.port}"], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode != 0 and p.stderr.strip(), "talking to a non-admin port succeeded"


# -- listeners, mechanisms, policy validation -----------------------------------------------
def test_sasl_handshake_lists_the_listener_mechanisms(cluster):
    err, mechanisms = sasl_handshake(cluster.listener("SASL_PLAINTEXT").port, "PLAIN")
    assert err == UNSUPPORTED_SASL_MECHANISM
    assert set(mechanisms) == DEFAULT_MECHANISMS

    err, mechanisms = sasl_handshake(cluster.listener("SASL_SSL").port, "SCRAM-SHA-512",
                                     ca=cluster.ca_path)
    assert err == 0 and set(mechanisms) == DEFAULT_MECHANISMS

    restricted = cluster.listener("SASL_SSL", RESTRICTED).port
    err, mechanisms = sasl_handshake(restricted, "OAUTHBEARER", ca=cluster.ca_path)
    assert err == UNSUPPORTED_SASL_MECHANISM
    assert set(mechanisms) == set(RESTRICTED)


def test_restricted_listener_refuses_other_mechanisms(cluster, auth):
    principal, key = full_access_principal(auth, "restricted")
    addr = cluster.addr("SASL_SSL", RESTRICTED)
    conf = {**oauth_conf(cluster, signer_oauth(key)), "bootstrap.servers": addr}
    with pytest.raises(KafkaException):
        list_topic_names(conf, timeout=5)
    # SCRAM-SHA-512 is enabled there
    user, password = scram_user(auth, uid("rl"))
    list_topic_names({**scram_conf(cluster, user, password), "bootstrap.servers": addr})


def test_plain_is_never_offered_on_sasl_plaintext(tmp_path):
    """PLAIN only on SASL_SSL: asking for it on SASL_PLAINTEXT is refused at startup (or, if
    the server starts, the listener does not offer PLAIN)."""
    from conftest import free_port
    port = free_port()
    log_path = tmp_path / "weir.log"
    cmd = [str(weir_bin()), "serve", "--data-dir", str(tmp_path / "data"),
           "--listener", f"SASL_PLAINTEXT://127.0.0.1:{port}?mechanisms=PLAIN+SCRAM-SHA-256",
           "--admin-listen", f"127.0.0.1:{free_port()}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                assert proc.returncode != 0, out[-2000:]
                assert "PLAIN" in out, f"no message about PLAIN:\n{out[-2000:]}"
                return
            if any(l.startswith("weir is ready:") for l in out.splitlines()):
                err, mechanisms = sasl_handshake(port, "PLAIN")
                assert err == UNSUPPORTED_SASL_MECHANISM and "PLAIN" not in mechanisms, (
                    err, mechanisms)
                return
            time.sleep(0.05)
        raise AssertionError(f"weir neither exited nor became ready:\n{out[-2000:]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_policy_with_condition_is_rejected(cluster, auth):
    principal = uid("cond")
    doc = policy(allow("kafka-cluster:Connect", CLUSTER_ARN))
    doc["Statement"][0]["Condition"] = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    auth.fails("policy", "put", principal, "with-condition", "--file", auth.policy_file(doc))
    assert "with-condition" not in auth.policy_listing(principal)
    auth.fails("policy", "put", principal, "garbage", "--file",
               str(Path(auth.policy_file({})).with_suffix(".missing")))
