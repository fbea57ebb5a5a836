#!/usr/bin/env node
// kafkajs helper for Weir's end-to-end tests.
//
//   node kafkajs_tool.js COMMAND 'JSON-ARGS'
//
// Prints one line `RESULT <json>` on success and exits 0; exits 1 with the error otherwise.
// Weir has no consumer groups yet, so only admin calls and producing are used here.
//
// Commands (every one takes {"brokers": ["127.0.0.1:PORT"]}):
//   createTopics    {topics: [{topic, numPartitions, configEntries: [{name, value}]}]}
//                   -> {created: bool}
//   metadata        {topics: [name]} -> {topics: [{name, partitions: [{partitionId, leader}]}]}
//   offsets         {topic} -> [{partition, offset, high, low}]
//   offsetsByTime   {topic, timestamp} -> [{partition, offset}]
//   deleteTopics    {topics: [name]} -> {}
//   listTopics      {} -> [name]
//   produce         {topic, acks, compression, messages: [{key, value, partition, timestamp,
//                    headers}], batchSize} -> [{topicName, partition, errorCode, baseOffset}]
'use strict';

const { Kafka, logLevel, CompressionTypes } = require('kafkajs');

async function main() {
  const [command, rawArgs] = process.argv.slice(2);
  if (!command) throw new Error('usage: kafkajs_tool.js COMMAND JSON-ARGS');
  const args = JSON.parse(rawArgs || '{}');
  const kafka = new Kafka({
    clientId: 'weir-e2e-kafkajs',
    brokers: args.brokers,
    logLevel: logLevel.WARN,
    connectionTimeout: 10000,
    requestTimeout: 30000,
    retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 2000 },
  });

  switch (command) {
    case 'createTopics':
    case 'metadata':
    case 'offsets':
    case 'offsetsByTime':
    case 'deleteTopics':
    case 'listTopics':
      return withAdmin(kafka, (admin) => adminCommand(admin, command, args));
    case 'produce':
      return produce(kafka, args);
    default:
      throw new Error(`unknown command ${command}`);
  }
}

async function withAdmin(kafka, fn) {
  const admin = kafka.admin();
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.disconnect();
  }
}

async function adminCommand(admin, command, args) {
  switch (command) {
    case 'createTopics': {
      const created = await admin.createTopics({
        topics: args.topics.map((t) => ({
          topic: t.topic,
          numPartitions: t.numPartitions,
          replicationFactor: 1,
          configEntries: t.configEntries || [],
        })),
        waitForLeaders: true,
        timeout: 30000,
      });
      return { created };
    }
    case 'metadata': {
      const md = await admin.fetchTopicMetadata({ topics: args.topics });
      return {
        topics: md.topics.map((t) => ({
          name: t.name,
          partitions: t.partitions
            .map((p) => ({ partitionId: p.partitionId, leader: p.leader, errorCode: p.partitionErrorCode }))
            .sort((a, b) => a.partitionId - b.partitionId),
        })),
      };
    }
    case 'offsets': {
      const offs = await admin.fetchTopicOffsets(args.topic);
      return offs
        .map((o) => ({ partition: o.partition, offset: Number(o.offset), high: Number(o.high), low: Number(o.low) }))
        .sort((a, b) => a.partition - b.partition);
    }
    case 'offsetsByTime': {
      const offs = await admin.fetchTopicOffsetsByTimestamp(args.topic, args.timestamp);
      return offs
        .map((o) => ({ partition: o.partition, offset: Number(o.offset) }))
        .sort((a, b) => a.partition - b.partition);
    }
    case 'deleteTopics':
      await admin.deleteTopics({ topics: args.topics, timeout: 30000 });
      return {};
    case 'listTopics':
      return (await admin.listTopics()).sort();
    default:
      throw new Error(`unknown admin command ${command}`);
  }
}

async function produce(kafka, args) {
  const producer = kafka.producer({ allowAutoTopicCreation: false, idempotent: !!args.idempotent,
    maxInFlightRequests: args.idempotent ? 1 : undefined });
  await producer.connect();
  try {
    const compression = args.compression ? CompressionTypes[args.compression] : CompressionTypes.None;
    const acks = args.acks === undefined ? -1 : args.acks;
    const batchSize = args.batchSize || 100;
    const results = [];
    for (let i = 0; i < args.messages.length; i += batchSize) {
      const chunk = args.messages.slice(i, i + batchSize).map((m) => ({
        key: m.key === undefined || m.key === null ? null : Buffer.from(m.key),
        value: m.value === null ? null : Buffer.from(m.value),
        partition: m.partition,
        timestamp: m.timestamp === undefined ? undefined : String(m.timestamp),
        headers: m.headers,
      }));
      const res = await producer.send({ topic: args.topic, acks, compression, messages: chunk });
      for (const r of res) {
        results.push({ topicName: r.topicName, partition: r.partition, errorCode: r.errorCode,
          baseOffset: r.baseOffset === undefined ? null : Number(r.baseOffset) });
      }
    }
    return results;
  } finally {
    await producer.disconnect();
  }
}

main()
  .then((result) => {
    process.stdout.write(`RESULT ${JSON.stringify(result === undefined ? null : result)}\n`);
    process.exit(0);
  })
  .catch((err) => {
    process.stderr.write(`kafkajs_tool error: ${err && err.stack ? err.stack : err}\n`);
    if (err && err.type) process.stderr.write(`type: ${err.type}\n`);
    process.exit(1);
  });
