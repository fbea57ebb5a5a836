#!/usr/bin/env node
// kafkajs group consumer for Weir's end-to-end tests (tests/e2e/test_groups.py).
//
//   node kafkajs_group.js 'JSON-ARGS'
//
// Args: {brokers: ["127.0.0.1:PORT"], topic, groupId, count, timeoutMs,
//        sessionTimeout, heartbeatInterval}
//
// Joins `groupId`, subscribes to `topic` from the beginning, consumes until `count` records
// arrived, committing synchronously (consumer.commitOffsets) after each record is processed,
// then leaves the group (disconnect). Prints one JSON object per line:
//   {"event":"join", memberId, leaderId, isLeader, protocol, assignment: {topic: [partitions]}}
//   {"event":"message", partition, offset, value}
//   {"event":"commit", partition, offset}            (offset = next offset to read)
//   {"event":"done", count, elapsedMs}
// Exits 0 after "done"; exits 1 with {"event":"error", ...} on an error or on timeout.
'use strict';

const { Kafka, logLevel } = require('kafkajs');

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function main() {
  const args = JSON.parse(process.argv[2] || '{}');
  const kafka = new Kafka({
    clientId: 'weir-e2e-kafkajs-group',
    brokers: args.brokers,
    logLevel: logLevel.WARN,
    connectionTimeout: 10000,
    requestTimeout: 30000,
    retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 2000 },
  });
  const consumer = kafka.consumer({
    groupId: args.groupId,
    sessionTimeout: args.sessionTimeout || 10000,
    heartbeatInterval: args.heartbeatInterval || 1000,
    rebalanceTimeout: 30000,
    maxWaitTimeInMs: 200,
  });
  const started = Date.now();
  let received = 0;
  let finish;
  let fail;
  const finished = new Promise((resolve, reject) => { finish = resolve; fail = reject; });

  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    emit({
      event: 'join',
      memberId: e.payload.memberId,
      leaderId: e.payload.leaderId,
      isLeader: e.payload.isLeader,
      protocol: e.payload.groupProtocol,
      assignment: e.payload.memberAssignment,
    });
  });
  consumer.on(consumer.events.CRASH, (e) => {
    emit({ event: 'crash', error: String(e.payload.error), restart: e.payload.restart });
  });

  const timer = setTimeout(
    () => fail(new Error(`timed out after ${args.timeoutMs} ms with ${received} of ${args.count} records`)),
    args.timeoutMs || 60000,
  );

  await consumer.connect();
  await consumer.subscribe({ topics: [args.topic], fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic, partition, message }) => {
      emit({
        event: 'message',
        partition,
        offset: Number(message.offset),
        value: message.value === null ? null : message.value.toString(),
      });
      const next = (BigInt(message.offset) + 1n).toString();
      await consumer.commitOffsets([{ topic, partition, offset: next }]);
      emit({ event: 'commit', partition, offset: Number(next) });
      received += 1;
      if (received >= args.count) finish();
    },
  });

  try {
    await finished;
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
  emit({ event: 'done', count: received, elapsedMs: Date.now() - started });
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    emit({ event: 'error', error: String(err && err.stack ? err.stack : err), type: err && err.type });
    process.exit(1);
  });
