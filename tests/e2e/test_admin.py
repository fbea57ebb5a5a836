"""Admin APIs: CreateTopics, Metadata, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs,
CreatePartitions, DeleteTopics, DescribeCluster, DeleteRecords, through confluent-kafka's
AdminClient, kafka-python's KafkaAdminClient, kcat -L and kafkajs."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType as KpConfigResourceType

import kproto
from helpers import (admin, consume_partitions, create_topic, kafkajs, kcat, produce_values,
                     producer, unique_topic, wait_for_topic, wait_until, watermarks)

T = 30  # seconds for each admin future


def kp_admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000,
                            client_id="weir-e2e-kafka-python")


def describe_topic_configs(bootstrap: str, topic: str) -> dict[str, ConfigEntry]:
    res = ConfigResource(ResourceType.TOPIC, topic)
    fs = admin(bootstrap).describe_configs([res], request_timeout=T)
    return fs[res].result(timeout=T)


def create_error(bootstrap: str, topic: NewTopic) -> KafkaError:
    fs = admin(bootstrap).create_topics([topic], operation_timeout=T, request_timeout=T)
    with pytest.raises(KafkaException) as ei:
        fs[topic.topic].result(timeout=T)
    return ei.value.args[0]


# -- create / describe ----------------------------------------------------------------------
def test_create_topic_with_partitions_and_configs(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-create")
    configs = {"retention.ms": "123456789", "max.message.bytes": "200000",
               "cleanup.policy": "delete", "retention.bytes": "987654321"}
    create_topic(b, t, partitions=5, config=configs)

    md = admin(b).list_topics(timeout=10)
    assert t in md.topics
    tm = md.topics[t]
    assert tm.error is None
    assert sorted(tm.partitions) == [0, 1, 2, 3, 4]
    broker_ids = set(md.brokers)
    for p in tm.partitions.values():
        assert p.leader in broker_ids, f"partition {p.id} leader {p.leader} not in {broker_ids}"
        assert p.replicas == [p.leader]
        assert p.isrs == [p.leader]

    entries = describe_topic_configs(b, t)
    for k, v in configs.items():
        assert k in entries, f"{k} missing from DescribeConfigs: {sorted(entries)}"
        assert entries[k].value == v, f"{k}: {entries[k].value!r} != {v!r}"
        assert entries[k].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, \
            f"{k} source {entries[k].source}"
        assert not entries[k].is_default
        assert not entries[k].is_read_only
    # a config that was not set is still described, with its default
    assert "message.timestamp.type" in entries
    assert entries["message.timestamp.type"].value == "CreateTime"
    assert entries["message.timestamp.type"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_describe_topics_confluent(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-desc")
    create_topic(b, t, partitions=3)
    fs = admin(b).describe_topics(TopicCollection([t]), request_timeout=T)
    desc = fs[t].result(timeout=T)
    assert desc.name == t
    assert not desc.is_internal
    assert [p.id for p in desc.partitions] == [0, 1, 2]
    for p in desc.partitions:
        assert p.leader is not None and p.leader.id >= 0
        assert [r.id for r in p.replicas] == [p.leader.id]
        assert [r.id for r in p.isr] == [p.leader.id]


def test_describe_topics_and_configs_kafka_python(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-kp")
    create_topic(b, t, partitions=4, config={"retention.ms": "3600000"})
    a = kp_admin(b)
    try:
        assert t in a.list_topics()
        (desc,) = a.describe_topics([t])
        assert desc["name"] == t
        assert desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2, 3]
        assert all(p["error_code"] == 0 and p["leader_id"] >= 0 for p in desc["partitions"])

        res = a.describe_configs([KpConfigResource(KpConfigResourceType.TOPIC, t)],
                                 config_filter="all")
        cfg = res["topic"][t]
        assert cfg["retention.ms"]["value"] == "3600000"
        assert cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert not cfg["retention.ms"]["read_only"]
        assert "cleanup.policy" in cfg and cfg["cleanup.policy"]["value"] == "delete"

        # 'modified' (the default filter) shows only what was set on the topic
        modified = a.describe_configs([KpConfigResource(KpConfigResourceType.TOPIC, t)])
        assert "retention.ms" in modified["topic"][t]
        assert "cleanup.policy" not in modified["topic"][t]
    finally:
        a.close()


# -- alter configs --------------------------------------------------------------------------
def test_incremental_alter_configs_confluent(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-incr")
    create_topic(b, t, partitions=1, config={"retention.ms": "600000"})
    a = admin(b)
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", "999999", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", "300000", incremental_operation=AlterConfigOpType.SET),
    ])
    a.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    entries = describe_topic_configs(b, t)
    assert entries["retention.ms"].value == "999999"
    assert entries["max.message.bytes"].value == "300000"

    # DELETE returns a config to its default; the other one is untouched (incremental)
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    a.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    entries = describe_topic_configs(b, t)
    assert entries["retention.ms"].value != "999999"
    assert entries["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["max.message.bytes"].value == "300000"


def test_legacy_alter_configs_confluent(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-legacy")
    create_topic(b, t, partitions=1, config={"retention.ms": "600000", "retention.bytes": "5000000"})
    a = admin(b)
    # legacy AlterConfigs replaces the whole set of topic overrides
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"retention.ms": "777777"})
    fs = a.alter_configs([res], request_timeout=T)
    fs[res].result(timeout=T)
    entries = describe_topic_configs(b, t)
    assert entries["retention.ms"].value == "777777"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["retention.bytes"].value != "5000000", \
        "legacy AlterConfigs must reset configs it does not name"


def test_alter_configs_kafka_python(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-kpalter")
    create_topic(b, t, partitions=1)
    a = kp_admin(b)
    try:
        r = a.alter_configs([KpConfigResource(KpConfigResourceType.TOPIC, t,
                                              configs={"retention.ms": "4444444"})],
                            incremental=True, raise_on_unknown=False)
        assert r["topic"][t] == "OK", r
        r = a.alter_configs([KpConfigResource(KpConfigResourceType.TOPIC, t,
                                              configs={"retention.bytes": "1234567"})],
                            incremental=False, raise_on_unknown=False)
        assert r["topic"][t] == "OK", r
        cfg = a.describe_configs([KpConfigResource(KpConfigResourceType.TOPIC, t)],
                                 config_filter="all")["topic"][t]
        # kafka-python's non-incremental path re-sends the modified configs it read first
        assert cfg["retention.ms"]["value"] == "4444444"
        assert cfg["retention.bytes"]["value"] == "1234567"
    finally:
        a.close()


def test_alter_configs_invalid_value_rejected(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-badcfg")
    create_topic(b, t, partitions=1)
    a = admin(b)
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as ei:
        a.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG, ei.value
    assert describe_topic_configs(b, t)["retention.ms"].value != "not-a-number"


# -- partitions -----------------------------------------------------------------------------
def test_create_partitions(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-parts")
    create_topic(b, t, partitions=2)
    a = admin(b)
    a.create_partitions([NewPartitions(t, 5)], request_timeout=T)[t].result(timeout=T)
    wait_for_topic(b, t, 5)
    md = a.list_topics(topic=t, timeout=10)
    assert sorted(md.topics[t].partitions) == [0, 1, 2, 3, 4]

    # the new partitions work
    offs = produce_values(b, t, [b"p4-a", b"p4-b"], partition=4)
    assert offs == [0, 1]
    got = consume_partitions(b, t, [4], expected={4: 2})
    assert [m.value() for m in got[4]] == [b"p4-a", b"p4-b"]

    # kafka-python grows it further
    kp = kp_admin(b)
    try:
        kp.create_partitions({t: 7})
        (desc,) = kp.describe_topics([t])
        assert len(desc["partitions"]) == 7
    finally:
        kp.close()
    wait_for_topic(b, t, 7)

    # shrinking is refused
    with pytest.raises(KafkaException) as ei:
        a.create_partitions([NewPartitions(t, 3)], request_timeout=T)[t].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS, ei.value
    assert len(a.list_topics(topic=t, timeout=10).topics[t].partitions) == 7


# -- delete ---------------------------------------------------------------------------------
def test_delete_topic(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-del")
    create_topic(b, t, partitions=2)
    produce_values(b, t, [b"before-delete-%d" % i for i in range(10)])
    a = admin(b)
    a.delete_topics([t], operation_timeout=T, request_timeout=T)[t].result(timeout=T)

    def gone():
        md = a.list_topics(timeout=10)
        return t not in md.topics
    wait_until(gone, 30, what=f"{t} to disappear from metadata")
    md = a.list_topics(topic=t, timeout=10)
    assert md.topics[t].error is not None
    assert md.topics[t].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # produce to the deleted topic: UNKNOWN_TOPIC_OR_PARTITION
    with kproto.Conn(weir_module.port) as c:
        (r,) = kproto.produce_v3(c, t, 0, kproto.record_batch([b"after-delete"]))
    assert r.error_code == kproto.UNKNOWN_TOPIC_OR_PARTITION, r

    errors = []
    p = producer(b, topic_metadata_propagation_max_ms=3000, message_timeout_ms=10000)
    p.produce(t, b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), errors

    # deleting again: unknown topic
    with pytest.raises(KafkaException) as ei:
        a.delete_topics([t], operation_timeout=T, request_timeout=T)[t].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value

    # a topic re-created under the same name starts empty
    create_topic(b, t, partitions=1)
    assert watermarks(b, t, 0) == (0, 0)
    assert produce_values(b, t, [b"new-life"]) == [0]
    got = consume_partitions(b, t, [0], expected={0: 1})
    assert [m.value() for m in got[0]] == [b"new-life"]


# -- error codes ----------------------------------------------------------------------------
def test_create_existing_topic_fails(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-exists")
    create_topic(b, t, partitions=3)
    err = create_error(b, NewTopic(t, num_partitions=1, replication_factor=1))
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    # the existing topic is untouched
    assert len(admin(b).list_topics(topic=t, timeout=10).topics[t].partitions) == 3


@pytest.mark.parametrize("name", ["bad name", "bad/name", "..", ".", "x" * 250, "ünïcode"])
def test_create_invalid_topic_name_fails(weir_module, name):
    b = weir_module.bootstrap
    err = create_error(b, NewTopic(name, num_partitions=1, replication_factor=1))
    assert err.code() == KafkaError.TOPIC_EXCEPTION, err  # INVALID_TOPIC_EXCEPTION (17)
    assert name not in admin(b).list_topics(timeout=10).topics


def test_create_topic_invalid_partitions_fails(weir_module):
    err = create_error(weir_module.bootstrap,
                       NewTopic(unique_topic("adm-zero"), num_partitions=0, replication_factor=1))
    assert err.code() == KafkaError.INVALID_PARTITIONS, err


def test_produce_unknown_topic_without_auto_create(weir_module):
    t = unique_topic("adm-unknown")
    with kproto.Conn(weir_module.port) as c:
        (r,) = kproto.produce_v3(c, t, 0, kproto.record_batch([b"nobody home"]))
    assert r.error_code == kproto.UNKNOWN_TOPIC_OR_PARTITION, r
    # and it was not created as a side effect
    md = admin(weir_module.bootstrap).list_topics(timeout=10)
    assert t not in md.topics


def test_produce_unknown_partition(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-nopart")
    create_topic(b, t, partitions=2)
    with kproto.Conn(weir_module.port) as c:
        (r,) = kproto.produce_v3(c, t, 7, kproto.record_batch([b"no such partition"]))
    assert r.error_code == kproto.UNKNOWN_TOPIC_OR_PARTITION, r


def test_record_over_max_message_bytes(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-big")
    create_topic(b, t, partitions=1, config={"max.message.bytes": "2000"})
    errors = []
    p = producer(b, message_timeout_ms=20000, compression_type="none")
    p.produce(t, b"s" * 100, partition=0, on_delivery=lambda e, m: errors.append(("small", e)))
    p.flush(30)
    p.produce(t, b"L" * 5000, partition=0, on_delivery=lambda e, m: errors.append(("large", e)))
    p.flush(30)
    assert errors[0] == ("small", None), errors
    assert errors[1][0] == "large" and errors[1][1] is not None, errors
    assert errors[1][1].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors
    # the same through a hand-made request
    with kproto.Conn(weir_module.port) as c:
        (r,) = kproto.produce_v3(c, t, 0, kproto.record_batch([b"L" * 5000]))
    assert r.error_code == kproto.MESSAGE_TOO_LARGE, r
    assert watermarks(b, t, 0) == (0, 1)


# -- cluster ----------------------------------------------------------------------------------
def test_describe_cluster(weir_module):
    b = weir_module.bootstrap
    desc = admin(b).describe_cluster(request_timeout=T).result(timeout=T)
    assert desc.cluster_id, "empty cluster id"
    assert len(desc.nodes) == 1, desc.nodes
    node = desc.nodes[0]
    assert (node.host, node.port) == ("127.0.0.1", weir_module.port), node
    assert node.id >= 0
    assert desc.controller is not None and desc.controller.id == node.id

    md = admin(b).list_topics(timeout=10)
    assert md.cluster_id == desc.cluster_id
    assert md.controller_id == node.id
    assert [(bm.id, bm.host, bm.port) for bm in md.brokers.values()] == [
        (node.id, "127.0.0.1", weir_module.port)]

    kp = kp_admin(b)
    try:
        c = kp.describe_cluster()
        assert c["cluster_id"] == desc.cluster_id
        assert [(x["broker_id"], x["host"], x["port"]) for x in c["brokers"]] == [
            (node.id, "127.0.0.1", weir_module.port)]
    finally:
        kp.close()


def test_kcat_lists_cluster_and_topics(weir_module):
    b = weir_module.bootstrap
    t1, t2 = unique_topic("adm-kcat"), unique_topic("adm-kcat")
    create_topic(b, t1, partitions=3)
    create_topic(b, t2, partitions=1)
    out = json.loads(kcat(["-b", b, "-L", "-J", "-m", "15"]))
    assert [br["name"] for br in out["brokers"]] == [b], out["brokers"]
    topics = {t["topic"]: t for t in out["topics"]}
    assert t1 in topics and t2 in topics, sorted(topics)
    assert sorted(p["partition"] for p in topics[t1]["partitions"]) == [0, 1, 2]
    assert len(topics[t2]["partitions"]) == 1
    broker_id = out["brokers"][0]["id"]
    assert all(p["leader"] == broker_id for p in topics[t1]["partitions"])
    # the plain text form as well
    text = kcat(["-b", b, "-L", "-t", t1, "-m", "15"]).decode()
    assert f'topic "{t1}" with 3 partitions' in text, text


# -- delete records ------------------------------------------------------------------------------
def test_delete_records(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-delrec")
    create_topic(b, t, partitions=2)
    for p in (0, 1):
        produce_values(b, t, [b"p%d-%03d" % (p, i) for i in range(100)], partition=p)
    a = admin(b)
    tp = TopicPartition(t, 0, 40)
    res = a.delete_records([tp], request_timeout=T)
    deleted = list(res.values())[0].result(timeout=T)
    assert deleted.low_watermark == 40
    assert watermarks(b, t, 0) == (40, 100)
    got = consume_partitions(b, t, [0], expected={0: 60})
    assert [m.offset() for m in got[0]] == list(range(40, 100))
    assert got[0][0].value() == b"p0-040"

    # kafka-python on partition 1
    kp = kp_admin(b)
    try:
        r = kp.delete_records({KpTopicPartition(t, 1): 75})
        (only,) = r.values()
        assert only["low_watermark"] == 75, r
    finally:
        kp.close()
    assert watermarks(b, t, 1) == (75, 100)
    got = consume_partitions(b, t, [1], expected={1: 25})
    assert [m.offset() for m in got[1]] == list(range(75, 100))

    # moving backwards is a no-op, beyond the high watermark is OFFSET_OUT_OF_RANGE
    a.delete_records([TopicPartition(t, 0, 10)], request_timeout=T)
    assert watermarks(b, t, 0) == (40, 100)
    with pytest.raises(KafkaException) as ei:
        list(a.delete_records([TopicPartition(t, 0, 500)], request_timeout=T).values())[0] \
            .result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE, ei.value
    # -1 means "up to the high watermark"
    list(a.delete_records([TopicPartition(t, 0, -1)], request_timeout=T).values())[0] \
        .result(timeout=T)
    assert watermarks(b, t, 0) == (100, 100)


# -- kafkajs admin -------------------------------------------------------------------------------
def test_kafkajs_admin(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("adm-js")
    r = kafkajs("createTopics", brokers=[b], topics=[
        {"topic": t, "numPartitions": 3, "configEntries": [{"name": "retention.ms", "value": "86400000"}]}])
    assert r["created"] is True
    r = kafkajs("createTopics", brokers=[b], topics=[{"topic": t, "numPartitions": 3}])
    assert r["created"] is False  # kafkajs reports TOPIC_ALREADY_EXISTS this way

    md = kafkajs("metadata", brokers=[b], topics=[t])
    (tm,) = md["topics"]
    assert tm["name"] == t
    assert [p["partitionId"] for p in tm["partitions"]] == [0, 1, 2]
    assert all(p["errorCode"] == 0 and p["leader"] >= 0 for p in tm["partitions"])
    assert describe_topic_configs(b, t)["retention.ms"].value == "86400000"

    produce_values(b, t, [b"a", b"b", b"c"], partition=1)
    offs = kafkajs("offsets", brokers=[b], topic=t)
    assert [(o["partition"], o["low"], o["high"]) for o in offs] == [(0, 0, 0), (1, 0, 3), (2, 0, 0)]

    assert t in kafkajs("listTopics", brokers=[b])
    kafkajs("deleteTopics", brokers=[b], topics=[t])
    wait_until(lambda: t not in admin(b).list_topics(timeout=10).topics, 30,
               what=f"{t} deleted")
