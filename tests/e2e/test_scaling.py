"""Many gateways and the scaler: `weir serve --gateways auto` (the local launcher starts and
stops `weir gateway` processes on 127.0.0.1), `weir partitions`, `weir scaler status`.

- Autoscaling under load: one gateway at first; an idempotent producer and a consumer group
  drive load; the scaler adds gateways and the rebalancer spreads partitions over them; when
  the load stops, gateways are removed after the cool-down. Every acknowledged record is in
  the log exactly once, in order per partition, and the group read all of them.
- kill -9 of a gateway under load: its partitions move within a bounded time (printed), the
  producer sees no error, nothing acknowledged is lost, and the scaler replaces the gateway.
- A manual move (`weir partitions move`) and a full rebalance (`weir partitions rebalance`)
  under load: the acknowledgement rate's dip is printed, and nothing is lost or duplicated.

Figures are printed (run with -s to see them); the assertions are about correctness, with
generous bounds on time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import threading
import time

import pytest
from conftest import weir_bin
from confluent_kafka import Consumer, KafkaError

from helpers import (
    RDKAFKA_LOG,
    assert_exactly_once,
    create_topic,
    producer,
    read_all,
    unique_topic,
    wait_until,
)

VALUE_PAD = 1000  # bytes per record: enough load per record to cross a low scaling target


def cluster_metadata(server) -> str:
    text = server.log_path.read_text(errors="replace")
    urls = re.findall(r"weir cluster metadata: (\S+)", text)
    assert urls, f"no cluster metadata URL in the log\n{server.log_tail()}"
    return urls[-1]


def weir(*args: str, timeout: float = 60) -> str:
    out = subprocess.run([str(weir_bin()), *args], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"weir {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def leaders(meta: str, topic: str) -> dict[int, int]:
    """{partition: leader node id} as `weir partitions list` shows them."""
    out = weir("partitions", "list", "--metadata", meta, "--topic", topic)
    found = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[0] == topic:
            found[int(cols[1])] = int(cols[2])
    return found


def live_gateways(meta: str) -> list[dict]:
    """The live, serving gateways in the scaler's status ([] before its first step)."""
    out = subprocess.run([str(weir_bin()), "scaler", "status", "--metadata", meta, "--json"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if out.returncode != 0 and "no scaler has run" in out.stderr:
        return []
    assert out.returncode == 0, f"weir scaler status failed:\n{out.stdout}\n{out.stderr}"
    status = json.loads(out.stdout)
    return [g for g in status["gateways"] if not g["draining"]]


class Load:
    """An idempotent producer of numbered records at a bounded rate, and a consumer group
    member reading the topic, each in its own thread."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: int, group: str):
        self.bootstrap, self.topic, self.partitions, self.rate = bootstrap, topic, partitions, rate
        self.group = group
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.acked: dict[int, list[tuple[int, int]]] = {}
        self.ack_times: list[float] = []
        self.errors: list = []
        self.consumed: set[int] = set()
        self.consumer_errors: list = []
        self.produced = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def _produce(self) -> None:
        try:
            self._produce_until_stopped()
        except Exception as e:  # a fatal producer error must fail the test, not vanish
            with self.lock:
                self.errors.append(e)

    def _produce_until_stopped(self) -> None:
        p = producer(self.bootstrap, **{"enable.idempotence": True, "linger.ms": 5})

        def cb(err, msg):
            with self.lock:
                if err is not None:
                    self.errors.append(err)
                else:
                    self.acked.setdefault(msg.partition(), []).append(
                        (msg.offset(), int(msg.value())))
                    self.ack_times.append(time.monotonic())

        v = 0
        started = time.monotonic()
        while not self.stop_producing.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while v < due:
                value = str(v).encode().ljust(VALUE_PAD)
                try:
                    p.produce(self.topic, value=value, partition=v % self.partitions,
                              on_delivery=cb)
                except BufferError:
                    break
                v += 1
            p.poll(0.01)
        self.produced = v
        remaining = p.flush(120)
        if remaining:
            raise AssertionError(f"{remaining} records undelivered after the flush")

    def _consume(self) -> None:
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 500,
            "fetch.wait.max.ms": 100,
            "logger": RDKAFKA_LOG,
        })
        c.subscribe([self.topic])
        try:
            while not self.stop_consuming.is_set():
                for m in c.consume(num_messages=500, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.consumer_errors.append(err)
                        continue
                    with self.lock:
                        self.consumed.add(int(m.value()))
        finally:
            c.close()

    def stop(self, consume_all_within: float = 90) -> dict[int, list[int]]:
        """Stops producing, lets the group read every acknowledged record, stops; returns the
        acknowledged values per partition in offset order."""
        self.stop_producing.set()
        self.threads[0].join(timeout=150)
        assert not self.threads[0].is_alive(), "the producer did not finish"
        acked = {p: [v for _, v in sorted(vals)] for p, vals in self.acked.items()}
        want = {v for vals in acked.values() for v in vals}
        deadline = time.monotonic() + consume_all_within
        while time.monotonic() < deadline:
            with self.lock:
                if want <= self.consumed:
                    break
            time.sleep(0.2)
        self.stop_consuming.set()
        self.threads[1].join(timeout=30)
        missing = want - self.consumed
        assert not missing, (f"the group did not read {len(missing)} acknowledged records, "
                             f"e.g. {sorted(missing)[:10]}")
        return acked

    def acked_count(self) -> int:
        with self.lock:
            return len(self.ack_times)

    def rate_windows(self, start: float, end: float, width: float = 0.25) -> list[int]:
        """Acknowledgements per `width`-second window between two monotonic times."""
        with self.lock:
            times = list(self.ack_times)
        n = max(1, int((end - start) / width))
        counts = [0] * n
        for t in times:
            i = int((t - start) / width)
            if 0 <= i < n:
                counts[i] += 1
        return counts


def check_log(server, topic: str, partitions: int, acked: dict[int, list[int]]) -> None:
    read = read_all(server.bootstrap, topic, partitions, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)


def test_autoscale_out_and_in_under_load(weir_factory):
    server = weir_factory(
        "--gateways", "auto", "--max-gateways", "3",
        "--target-bytes-per-sec", "150000",
        "--scale-out-cooldown-ms", "1000", "--scale-in-cooldown-ms", "6000",
        "--rebalance-interval-ms", "1000", "--partition-move-cooldown-ms", "5000")
    meta = cluster_metadata(server)
    topic = unique_topic("scale")
    create_topic(server.bootstrap, topic, partitions=12)
    assert len(live_gateways(meta)) <= 1

    load = Load(server.bootstrap, topic, 12, rate=600, group=unique_topic("scale-group")).start()
    started = time.monotonic()
    # The scaler adds gateways: three live ones, leading partitions between them.
    wait_until(lambda: len(live_gateways(meta)) == 3, 40, what="three live gateways")
    gateways_at = time.monotonic() - started
    wait_until(lambda: len(set(leaders(meta, topic).values())) == 3, 40,
               what="partitions led by all three gateways")
    spread_at = time.monotonic() - started
    print(f"\nscale-out under load: 3 gateways {gateways_at:.1f} s after the load started, "
          f"partitions spread over them after {spread_at:.1f} s")
    time.sleep(max(2.0, 8.0 - (time.monotonic() - started)))  # load on the three gateways
    acked = load.stop()
    assert not load.errors, f"producer errors: {load.errors[:5]}"
    total = sum(len(v) for v in acked.values())
    assert total >= 600 * 5, f"only {total} records acknowledged"
    status = json.loads(weir("scaler", "status", "--metadata", meta, "--json"))
    actions = [d["action"] for d in status["decisions"]]
    assert any("ScaleOut" in json.dumps(a) for a in actions), actions

    # The load stopped: gateways are removed after the cool-down, one at a time.
    stopped = time.monotonic()
    wait_until(lambda: len(live_gateways(meta)) == 1, 60, interval=0.5,
               what="scale-in back to one gateway")
    print(f"scale-in to 1 gateway {time.monotonic() - stopped:.1f} s after the load stopped "
          f"(cool-down 6 s per step)")
    wait_until(lambda: set(leaders(meta, topic).values()) == {0}, 30,
               what="every partition back on gateway 0")
    check_log(server, topic, 12, acked)


def gateway_pid(server, node_id: int) -> int:
    """PID of the local gateway with this node id under the server's data dir."""
    marker = str(server.data_dir / "gateways" / f"gateway-{node_id}")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "gateway" in words and marker in words and str(node_id) in words:
            return int(entry)
    raise AssertionError(f"no process for gateway {node_id} ({marker})")


def test_kill9_gateway_under_load(weir_factory):
    server = weir_factory(
        "--gateways", "auto", "--min-gateways", "3", "--max-gateways", "3",
        "--rebalance-interval-ms", "1000", "--partition-move-cooldown-ms", "1000",
        "--member-timeout-ms", "3000")
    meta = cluster_metadata(server)
    topic = unique_topic("kill")
    create_topic(server.bootstrap, topic, partitions=9)
    wait_until(lambda: len(set(leaders(meta, topic).values())) == 3, 40,
               what="partitions led by three gateways")
    load = Load(server.bootstrap, topic, 9, rate=300, group=unique_topic("kill-group")).start()
    time.sleep(3)

    def settled():
        now = leaders(meta, topic)
        return -1 not in now.values() and len(set(now.values())) == 3 and now
    before = wait_until(settled, 30, what="every partition led, by three gateways")
    victim = next(n for n in sorted(set(before.values())) if n > 0)
    theirs = sorted(p for p, n in before.items() if n == victim)
    killed_at = time.monotonic()
    os.kill(gateway_pid(server, victim), signal.SIGKILL)

    live_ids = lambda: {g["node_id"] for g in live_gateways(meta)}  # noqa: E731

    def moved():
        now = leaders(meta, topic)
        return all(now[p] not in (victim, -1) for p in theirs) and now
    after = wait_until(moved, 30, interval=0.1, what=f"partitions {theirs} to leave gateway {victim}")
    took = time.monotonic() - killed_at
    print(f"\nkill -9 of gateway {victim}: its {len(theirs)} partitions led elsewhere after "
          f"{took:.2f} s (member timeout 3 s): {after}")
    assert took < 20
    time.sleep(3)
    acked = load.stop()
    assert not load.errors, f"producer errors: {load.errors[:5]}"
    # The scaler replaced the dead gateway (min 3).
    wait_until(lambda: len(live_ids()) == 3 and victim not in live_ids(), 30,
               what="a replacement gateway")
    check_log(server, topic, 9, acked)


def test_manual_move_and_rebalance_under_load(weir_factory):
    # Two gateways; the scaler's rebalancer is off (--max-moves 0), so every move is ours.
    server = weir_factory("--gateways", "auto", "--min-gateways", "2", "--max-gateways", "2",
                          "--max-moves", "0")
    meta = cluster_metadata(server)
    topic = unique_topic("move")
    create_topic(server.bootstrap, topic, partitions=8)
    wait_until(lambda: len(live_gateways(meta)) == 2, 30, what="two gateways")
    other = next(g["node_id"] for g in live_gateways(meta) if g["node_id"] != 0)
    # Set-up: every partition on gateway 0, so that the rebalance has work to do.
    for p, n in wait_until(lambda: len(leaders(meta, topic)) == 8 and leaders(meta, topic), 30,
                           what="leaders").items():
        if n != 0:
            weir("partitions", "move", "--metadata", meta, "--topic", topic,
                 "--partition", str(p), "--to", "0")
    assert set(leaders(meta, topic).values()) == {0}
    load = Load(server.bootstrap, topic, 8, rate=800, group=unique_topic("move-group")).start()
    time.sleep(4)

    t0 = time.monotonic()
    out = json.loads(weir("partitions", "move", "--metadata", meta, "--topic", topic,
                          "--partition", "3", "--to", str(other)))
    t1 = time.monotonic()
    assert out["to"] == other and leaders(meta, topic)[3] == other
    time.sleep(3)
    t2 = time.monotonic()
    out2 = json.loads(weir("partitions", "rebalance", "--metadata", meta))
    t3 = time.monotonic()
    placed = leaders(meta, topic)
    assert sorted(set(placed.values())) == sorted({0, other}), placed
    time.sleep(3)
    t4 = time.monotonic()
    acked = load.stop()
    assert not load.errors, f"producer errors: {load.errors[:5]}"

    def dip(before: list[int], during: list[int]) -> str:
        base = statistics.median(before) or 1
        return f"median {base * 4:.0f}/s before, lowest 250 ms window {min(during) * 4}/s " \
               f"({100 * (1 - min(during) / base):.0f}% dip)"
    print(f"\nmanual move of one partition: {out['moved_ms']} ms; acks "
          f"{dip(load.rate_windows(t0 - 3, t0), load.rate_windows(t0, t1 + 1))}")
    print(f"full rebalance ({out2['moves']} moves): {out2['moved_ms']} ms; acks "
          f"{dip(load.rate_windows(t2 - 2.5, t2), load.rate_windows(t2, t3 + 1))}")
    # The producer kept being acknowledged after the moves.
    after = load.rate_windows(t3 + 1, t4)
    assert sum(after) > 0, "no acknowledgements after the rebalance"
    check_log(server, topic, 8, acked)


@pytest.mark.parametrize("cmd", [["gateway"], ["scaler"]])
def test_cluster_commands_refuse_an_unshared_store(tmp_path, cmd):
    out = subprocess.run([str(weir_bin()), *cmd, "--metadata", f"embedded://{tmp_path}/m",
                          "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "dynamodb://" in out.stderr and "quic://" in out.stderr, out.stderr


def test_local_gateways_share_listeners_and_credentials(tmp_path):
    """The local gateways get the parent's listener (SASL_SSL, SCRAM) and its certificate, and
    pick up a user created through gateway 0's admin API after they started."""
    from auth_helpers import (ServerPool, WeirAuth, admin_client, allow, policy, scram_conf,
                              uid)
    from confluent_kafka import Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    pool = ServerPool("scale-auth")
    try:
        server = pool.start(["SASL_SSL"], plaintext=False,
                            extra_args=["--gateways", "auto", "--min-gateways", "2",
                                        "--max-gateways", "2"])
        meta = cluster_metadata(server)
        wait_until(lambda: len(live_gateways(meta)) == 2, 30, what="two gateways")
        auth = WeirAuth(server.admin_url, tmp_path)
        user, password = uid("scale"), "pw-" + os.urandom(9).hex()
        auth.scram_set(user, password, mechanism="SCRAM-SHA-512")
        auth.policy_put(user, "all", policy(allow("kafka-cluster:*", "*")))
        conf = scram_conf(server, user, password)
        topic = unique_topic("scale-auth")
        adm = admin_client(conf)  # kept referenced: a collected handle fails its futures
        adm.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)],
                          operation_timeout=30)[topic].result(timeout=30)
        wait_until(lambda: len(set(leaders(meta, topic).values()) - {-1}) == 2, 40,
                   what="partitions led by both gateways")
        # Every partition, the local gateway's included, takes writes from the new user.
        p = Producer({**conf, "enable.idempotence": True, "acks": "all"})
        errors = []
        delivered = []
        for i in range(40):
            p.produce(topic, value=str(i).encode(), partition=i % 4,
                      on_delivery=lambda err, msg: (errors if err else delivered).append(msg))
        assert p.flush(60) == 0
        assert not errors, errors[:3]
        c = Consumer({**conf, "group.id": uid("g"), "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "enable.partition.eof": True})
        c.assign([TopicPartition(topic, part, 0) for part in range(4)])
        got, eof, deadline = [], set(), time.monotonic() + 30
        while len(eof) < 4 and time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.5):
                if m.error() is None:
                    got.append(int(m.value()))
                    eof.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
        c.close()
        assert sorted(got) == list(range(40))
    finally:
        pool.close()
