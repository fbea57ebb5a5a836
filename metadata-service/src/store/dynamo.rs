//! The DynamoDB backend (`dynamodb://<table-prefix>`), built on `aws-sdk-dynamodb`.
//!
//! Two tables, both on-demand (PAY_PER_REQUEST), created by [`DynamoStore::init`]
//! (`weir metadata init`):
//!
//! `<prefix>-meta`: partition key `pk` (S), sort key `sk` (S):
//!
//! | item                     | pk                     | sk                   | attributes |
//! |--------------------------|------------------------|----------------------|------------|
//! | cluster id               | `cluster`              | `id`                 | `value` S |
//! | producer id counter      | `counter`              | `producer_id`        | `value` N |
//! | topic                    | `topic`                | topic name           | `doc` S (JSON), `id` S |
//! | partition                | `part#<topic id>`      | partition, 10 digits | `next_offset`, `log_start_offset`, `leader_epoch`, `log_bytes` N |
//! | idempotent producers     | `producers#<topic id>` | partition, 10 digits | `doc` S (JSON: producer id -> last batches) |
//! | object reference count   | `object`               | object key           | `refs` N |
//! | committed offset         | `group#<group>`        | `<topic>#<partition>`| `doc` S (JSON) |
//! | group directory          | `groups`               | group                | `commits` N |
//! | small document           | `record#<namespace>`   | key                  | `value` B |
//!
//! `<prefix>-index`, the offset index: partition key `pk` (S) = `<topic id>#<partition>`, sort
//! key `sk` (N) = base offset; attributes `last`, `ts`, `position`, `length`, `batches` (N),
//! `object` (S). "The entry holding offset X" is one query (`sk <= X`, descending, limit 1).
//!
//! Every write that guards the log is conditional. An index commit is one
//! `TransactWriteItems` per flush (split only when a flush touches more partitions than one
//! transaction holds): per partition, an update of the partition item conditioned on the
//! leader epoch and the next offset, the new index item, and the producer states; one
//! reference-count update per object. A cancelled transaction is classified by re-reading
//! the partitions: mismatched ones are refused (fenced or offset mismatch), the rest retried.
//! Throttling and transient errors are retried by the SDK's standard retry strategy
//! (exponential backoff with jitter); transaction conflicts by this module, with backoff.
//!
//! Reads of the offset index go through a per-partition cache of contiguous index entries.
//! Committed entries never change, so cached ones stay true; entries past the cached run are
//! always read from the table, so a reader never misses a newer commit. A truncation by this
//! process and taking leadership of a partition drop its cached run.

use super::{decode, encode};
use crate::{
    CommitOutcome, CommittedOffset, MetadataError, MetadataStore, PartitionState, PartitionTail,
    Result, RetentionLimits, TopicRecord, Truncation, PRODUCER_BATCHES_KEPT,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, DeleteRequest, KeySchemaElement,
    KeyType, Put, PutRequest, ReturnValue, ScalarAttributeType, TableStatus, TransactWriteItem,
    Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_common::{
    now_ms, CommitRefused, IndexEntry, LeaderEpoch, Offset, PartitionCommit, PartitionIndex,
    ProducerBatchState, TopicId, TopicPartition,
};

type Item = HashMap<String, AttributeValue>;
/// Idempotent-producer state of one partition: producer id -> its last batches.
type ProducerDoc = BTreeMap<i64, Vec<ProducerBatchState>>;

/// Operations per `TransactWriteItems` (DynamoDB's limit).
const MAX_TRANSACTION_ITEMS: usize = 100;
/// Items per `BatchWriteItem` (DynamoDB's limit).
const MAX_BATCH_WRITE: usize = 25;
/// Producer ids kept per partition (keeps the producers item far below the 400 KB item limit).
const MAX_PRODUCERS_PER_PARTITION: usize = 500;
/// Index entries kept in the cache per partition.
const CACHED_RUN: usize = 1024;
/// Attempts of a transaction that keeps being cancelled by conflicts.
const TRANSACTION_ATTEMPTS: u32 = 12;

/// Where a `dynamodb://` URL points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DynamoOptions {
    /// Table name prefix: tables are `<prefix>-meta` and `<prefix>-index`.
    pub table_prefix: String,
    /// Overrides the region of the standard AWS settings.
    pub region: Option<String>,
    /// Overrides the endpoint (AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL).
    pub endpoint: Option<String>,
}

impl DynamoOptions {
    /// Parses `dynamodb://<prefix>[?region=R&endpoint=URL]`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| MetadataError::Invalid(format!("'{url}' is not a dynamodb:// URL")))?;
        let (prefix, query) = rest.split_once('?').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if prefix.is_empty() || prefix.len() > 200 || !prefix.chars().all(valid) {
            return Err(MetadataError::Invalid(format!(
                "'{url}': the table prefix must be 1-200 characters of a-z, A-Z, 0-9, '_', '-', '.'"
            )));
        }
        let mut params = weir_common::url_params(query, &["region", "endpoint"])
            .map_err(|e| MetadataError::Invalid(format!("'{url}': {e}")))?
            .into_iter();
        Ok(DynamoOptions {
            table_prefix: prefix.to_string(),
            region: params.next().flatten(),
            endpoint: params.next().flatten(),
        })
    }
}

/// Counts DynamoDB requests (every attempt, retries included) by operation.
#[derive(Debug, Clone, Default)]
struct CountRequests {
    requests: Family<Vec<(String, String)>, Counter>,
}

impl aws_sdk_dynamodb::config::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_dynamodb::error::BoxError> {
        // X-Amz-Target: DynamoDB_20120810.<Operation>
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("unknown")
            .to_string();
        self.requests
            .get_or_create(&vec![("operation".to_string(), operation)])
            .inc();
        Ok(())
    }
}

/// The DynamoDB metadata store.
pub struct DynamoStore {
    client: Client,
    counter: CountRequests,
    meta: String,
    index: String,
    /// Contiguous runs of index entries per partition.
    entries: moka::sync::Cache<TopicPartition, Arc<Vec<IndexEntry>>>,
    /// Producer states this process wrote or loaded, per partition it leads.
    producers: Mutex<HashMap<TopicPartition, Arc<ProducerDoc>>>,
    cluster: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("meta", &self.meta)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn sdk<E, R>(e: SdkError<E, R>) -> MetadataError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    MetadataError::Backend(format!("DynamoDB: {}", DisplayErrorContext(&e)))
}

/// Whether a request failed only because its condition did not hold.
fn condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

/// A value as the JSON text stored in a `doc` attribute.
fn encode_text<T: serde::Serialize>(value: &T) -> Result<String> {
    String::from_utf8(encode(value)?).map_err(|e| MetadataError::Corrupt(e.to_string()))
}

fn build<T>(r: std::result::Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T> {
    r.map_err(|e| MetadataError::Invalid(format!("DynamoDB request: {e}")))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: AttributeValue) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), sk)])
}

fn get_n(item: &Item, name: &str) -> Result<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| MetadataError::Corrupt(format!("attribute {name}: bad number {v}"))),
        _ => Err(MetadataError::Corrupt(format!("attribute {name} missing"))),
    }
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(MetadataError::Corrupt(format!("attribute {name} missing"))),
    }
}

fn part_pk(topic: TopicId) -> String {
    format!("part#{topic}")
}

fn producers_pk(topic: TopicId) -> String {
    format!("producers#{topic}")
}

fn part_sk(p: PartitionIndex) -> AttributeValue {
    s(format!("{p:010}"))
}

fn index_pk(tp: TopicPartition) -> String {
    format!("{}#{}", tp.topic_id, tp.partition)
}

fn offset_sk(topic: &str, p: PartitionIndex) -> String {
    format!("{topic}#{p:010}")
}

fn partition_from(item: &Item) -> Result<PartitionState> {
    let p = get_s(item, "sk")?;
    Ok(PartitionState {
        partition: p
            .parse()
            .map_err(|_| MetadataError::Corrupt(format!("bad partition key {p}")))?,
        next_offset: get_n(item, "next_offset")?,
        log_start_offset: get_n(item, "log_start_offset")?,
        leader_epoch: get_n(item, "leader_epoch")? as i32,
        log_bytes: get_n(item, "log_bytes")?.max(0) as u64,
        leader: match item.get("leader") {
            Some(_) => get_n(item, "leader")? as i32,
            None => crate::NO_LEADER,
        },
    })
}

fn partition_item(topic: TopicId, state: &PartitionState) -> Item {
    let mut item = key(part_pk(topic), part_sk(state.partition));
    item.insert("next_offset".into(), n(state.next_offset));
    item.insert("log_start_offset".into(), n(state.log_start_offset));
    item.insert("leader_epoch".into(), n(state.leader_epoch));
    item.insert("log_bytes".into(), n(state.log_bytes));
    item.insert("leader".into(), n(state.leader));
    item
}

fn entry_item(e: &IndexEntry) -> Item {
    HashMap::from([
        ("pk".to_string(), s(index_pk(e.tp))),
        ("sk".to_string(), n(e.base_offset)),
        ("last".to_string(), n(e.last_offset)),
        ("ts".to_string(), n(e.max_timestamp)),
        ("object".to_string(), s(e.object.clone())),
        ("position".to_string(), n(e.position)),
        ("length".to_string(), n(e.length)),
        ("batches".to_string(), n(e.batches)),
    ])
}

fn entry_from(tp: TopicPartition, item: &Item) -> Result<IndexEntry> {
    Ok(IndexEntry {
        tp,
        base_offset: get_n(item, "sk")?,
        last_offset: get_n(item, "last")?,
        max_timestamp: get_n(item, "ts")?,
        object: get_s(item, "object")?.to_string(),
        position: get_n(item, "position")?.max(0) as u64,
        length: get_n(item, "length")?.clamp(0, i64::from(u32::MAX)) as u32,
        batches: get_n(item, "batches")?.clamp(0, i64::from(u32::MAX)) as u32,
    })
}

/// How a truncation decides which index entries go.
#[derive(Clone, Copy)]
enum Cut {
    /// DeleteRecords: the log starts at this offset.
    Before(Offset),
    Retention(RetentionLimits),
}

fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(7);
    Duration::from_millis(base + rand::random_range(0..=base))
}

impl DynamoStore {
    /// Connects with the standard AWS settings (environment, profiles, instance roles),
    /// overridden by `options`. Does not touch the tables.
    pub async fn connect(options: &DynamoOptions) -> Result<Self> {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(8)
                    .with_initial_backoff(Duration::from_millis(20))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut config = loader.load().await;
        if config.region().is_none() {
            tracing::info!("no AWS region configured (AWS_REGION, profile); using us-east-1");
            config = config
                .into_builder()
                .region(aws_config::Region::from_static("us-east-1"))
                .build();
        }
        let counter = CountRequests::default();
        let client_config = aws_sdk_dynamodb::config::Builder::from(&config)
            .interceptor(counter.clone())
            .build();
        Ok(DynamoStore {
            client: Client::from_conf(client_config),
            counter,
            meta: format!("{}-meta", options.table_prefix),
            index: format!("{}-index", options.table_prefix),
            entries: moka::sync::Cache::builder()
                .weigher(|_, run: &Arc<Vec<IndexEntry>>| run.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(200_000)
                .build(),
            producers: Mutex::new(HashMap::new()),
            cluster: tokio::sync::OnceCell::new(),
        })
    }

    /// The two table names.
    pub fn tables(&self) -> [&str; 2] {
        [&self.meta, &self.index]
    }

    /// Whether both tables exist.
    pub async fn tables_exist(&self) -> Result<bool> {
        for table in self.tables() {
            match self.client.describe_table().table_name(table).send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_resource_not_found_exception()) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(sdk(e)),
            }
        }
        Ok(true)
    }

    /// Creates the tables if they do not exist and waits until they are active. Idempotent.
    /// Returns the tables it created.
    pub async fn init(&self) -> Result<Vec<String>> {
        let mut created = Vec::new();
        for (table, sort_type) in [
            (&self.meta, ScalarAttributeType::S),
            (&self.index, ScalarAttributeType::N),
        ] {
            let request = self
                .client
                .create_table()
                .table_name(table.as_str())
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(build(
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(ScalarAttributeType::S)
                        .build(),
                )?)
                .attribute_definitions(build(
                    AttributeDefinition::builder()
                        .attribute_name("sk")
                        .attribute_type(sort_type)
                        .build(),
                )?)
                .key_schema(build(
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build(),
                )?)
                .key_schema(build(
                    KeySchemaElement::builder()
                        .attribute_name("sk")
                        .key_type(KeyType::Range)
                        .build(),
                )?);
            match request.send().await {
                Ok(_) => created.push(table.clone()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_resource_in_use_exception()) => {}
                Err(e) => return Err(sdk(e)),
            }
            self.wait_active(table).await?;
        }
        Ok(created)
    }

    async fn wait_active(&self, table: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(sdk)?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MetadataError::Backend(format!(
                    "DynamoDB table {table} did not become ACTIVE within 120 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // -- small helpers ----------------------------------------------------------------------

    async fn get(&self, table: &str, key: Item) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item)
    }

    /// Every item a query returns (all pages), or the first `max`.
    async fn query_all(&self, query: QueryFluentBuilder, max: Option<usize>) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            out.extend(page.items.unwrap_or_default());
            if max.is_some_and(|m| out.len() >= m) {
                out.truncate(max.unwrap_or(usize::MAX));
                break;
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// A consistent query of one meta-table partition key.
    fn query_pk(&self, pk: &str) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.meta)
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
    }

    /// A consistent query of one partition's index entries, ascending.
    fn query_index(&self, tp: TopicPartition) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.index)
            .consistent_read(true)
            .expression_attribute_values(":pk", s(index_pk(tp)))
    }

    /// Writes or deletes items in batches of 25, retrying unprocessed ones.
    async fn batch_write(&self, table: &str, requests: Vec<WriteRequest>) -> Result<()> {
        for chunk in requests.chunks(MAX_BATCH_WRITE) {
            let mut pending = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .map_err(sdk)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt > TRANSACTION_ATTEMPTS {
                        return Err(MetadataError::Backend(
                            "DynamoDB kept leaving batch writes unprocessed".into(),
                        ));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Ok(())
    }

    /// Runs one transaction, retrying while it is cancelled only by conflicts or throttling.
    /// Returns `Ok(false)` when a condition failed (nothing was written).
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool> {
        for attempt in 0..TRANSACTION_ATTEMPTS {
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => {
                    let Some(se) = e.as_service_error() else {
                        return Err(sdk(e));
                    };
                    if se.is_transaction_in_progress_exception() {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) = se else {
                        return Err(sdk(e));
                    };
                    let codes: Vec<&str> = c
                        .cancellation_reasons()
                        .iter()
                        .filter_map(|r| r.code())
                        .collect();
                    if codes.contains(&"ConditionalCheckFailed") {
                        return Ok(false);
                    }
                    // Conflicts with another transaction, throttling: nothing was written.
                    tracing::debug!(?codes, attempt, "DynamoDB transaction cancelled; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(MetadataError::Backend(
            "DynamoDB transaction kept conflicting with other writers".into(),
        ))
    }

    /// A partition's tail: `state` with its producer batches, read afresh into the cache.
    async fn tail_of(&self, tp: TopicPartition, state: PartitionState) -> Result<PartitionTail> {
        self.lock_producers().remove(&tp);
        let doc = self.producer_doc(tp).await?;
        let mut producers: Vec<ProducerBatchState> = doc.values().flatten().copied().collect();
        producers.sort_by_key(|b| (b.producer_id, b.base_offset));
        self.lock_producers().insert(tp, doc);
        Ok(PartitionTail { state, producers })
    }

    async fn read_partition(&self, tp: TopicPartition) -> Result<Option<PartitionState>> {
        self.get(&self.meta, key(part_pk(tp.topic_id), part_sk(tp.partition)))
            .await?
            .map(|item| partition_from(&item))
            .transpose()
    }

    async fn read_topic(&self, name: &str) -> Result<Option<(TopicRecord, String)>> {
        let Some(item) = self.get(&self.meta, key("topic", s(name))).await? else {
            return Ok(None);
        };
        let doc = get_s(&item, "doc")?.to_string();
        Ok(Some((decode(doc.as_bytes())?, doc)))
    }

    /// Replaces a topic's document if nobody changed it since it was read.
    async fn update_topic(
        &self,
        name: &str,
        mut change: impl FnMut(&mut TopicRecord) -> Result<Option<Vec<PartitionState>>>,
    ) -> Result<TopicRecord> {
        for attempt in 0..TRANSACTION_ATTEMPTS {
            let (mut record, old) = self
                .read_topic(name)
                .await?
                .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
            let new_partitions = change(&mut record)?;
            if let Some(states) = new_partitions {
                // Partition items first: invisible until the topic document counts them.
                let puts = states
                    .iter()
                    .map(|st| put_request(partition_item(record.id, st)))
                    .collect::<Result<Vec<_>>>()?;
                self.batch_write(&self.meta, puts).await?;
            }
            let doc = encode_text(&record)?;
            let result = self
                .client
                .update_item()
                .table_name(&self.meta)
                .set_key(Some(key("topic", s(name))))
                .update_expression("SET doc = :doc")
                .condition_expression("doc = :old")
                .expression_attribute_values(":doc", s(doc))
                .expression_attribute_values(":old", s(old))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(record),
                Err(e) if condition_failed(&e) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(sdk(e)),
            }
        }
        Err(MetadataError::Backend(format!(
            "topic '{name}' kept changing under a concurrent update"
        )))
    }

    async fn producer_doc(&self, tp: TopicPartition) -> Result<Arc<ProducerDoc>> {
        if let Some(doc) = self.lock_producers().get(&tp) {
            return Ok(doc.clone());
        }
        let doc = match self
            .get(
                &self.meta,
                key(producers_pk(tp.topic_id), part_sk(tp.partition)),
            )
            .await?
        {
            Some(item) => decode(get_s(&item, "doc")?.as_bytes())?,
            None => ProducerDoc::new(),
        };
        Ok(Arc::new(doc))
    }

    fn lock_producers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Arc<ProducerDoc>>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Merges a cached run with newly read contiguous entries.
    fn remember_entries(&self, tp: TopicPartition, fresh: &[IndexEntry]) {
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
            return;
        };
        let mut run: Vec<IndexEntry> = match self.entries.get(&tp) {
            Some(old)
                if old
                    .first()
                    .is_some_and(|o| o.base_offset <= last.last_offset + 1)
                    && old
                        .last()
                        .is_some_and(|o| o.last_offset + 1 >= first.base_offset) =>
            {
                let mut merged: BTreeMap<Offset, IndexEntry> =
                    old.iter().map(|e| (e.base_offset, e.clone())).collect();
                merged.extend(fresh.iter().map(|e| (e.base_offset, e.clone())));
                merged.into_values().collect()
            }
            _ => fresh.to_vec(),
        };
        if run.len() > CACHED_RUN {
            run.drain(..run.len() - CACHED_RUN);
        }
        self.entries.insert(tp, Arc::new(run));
    }

    async fn truncate(&self, tp: TopicPartition, cut: Cut) -> Result<Truncation> {
        let chunk = (MAX_TRANSACTION_ITEMS - 1) / 2;
        let mut removed_total = 0;
        let mut dead = Vec::new();
        let mut attempt = 0;
        self.entries.invalidate(&tp);
        loop {
            let state = self
                .read_partition(tp)
                .await?
                .ok_or(MetadataError::UnknownPartition(tp))?;
            let items = self
                .query_all(
                    self.query_index(tp)
                        .key_condition_expression("pk = :pk")
                        .limit(chunk as i32),
                    Some(chunk),
                )
                .await?;
            let mut bytes = state.log_bytes;
            let mut removed = Vec::new();
            for item in &items {
                let e = entry_from(tp, item)?;
                let drop = match cut {
                    Cut::Before(offset) => e.last_offset < offset,
                    Cut::Retention(limits) => {
                        let expired = limits
                            .min_timestamp
                            .is_some_and(|min| e.max_timestamp < min);
                        let oversize = limits
                            .max_bytes
                            .is_some_and(|max| bytes.saturating_sub(u64::from(e.length)) >= max);
                        expired || oversize
                    }
                };
                if !drop {
                    break;
                }
                bytes = bytes.saturating_sub(u64::from(e.length));
                removed.push(e);
            }
            let requested = match cut {
                Cut::Before(offset) => offset,
                Cut::Retention(_) => i64::MIN,
            };
            let after_removed = removed
                .last()
                .map(|e| e.last_offset + 1)
                .unwrap_or(i64::MIN);
            let start = state
                .log_start_offset
                .max(after_removed)
                .max(requested)
                .min(state.next_offset);
            if removed.is_empty() && start == state.log_start_offset {
                return Ok(Truncation {
                    log_start_offset: start,
                    removed_entries: removed_total,
                    dead_objects: dead,
                });
            }
            let removed_bytes: u64 = removed.iter().map(|e| u64::from(e.length)).sum();
            let mut ops = vec![transact_update(
                Update::builder()
                    .table_name(&self.meta)
                    .set_key(Some(key(part_pk(tp.topic_id), part_sk(tp.partition))))
                    .update_expression("SET log_start_offset = :start ADD log_bytes :minus")
                    .condition_expression("log_start_offset = :old")
                    .expression_attribute_values(":start", n(start))
                    .expression_attribute_values(":minus", n(-(removed_bytes as i64)))
                    .expression_attribute_values(":old", n(state.log_start_offset))
                    .build(),
            )?];
            let mut released: BTreeMap<&str, i64> = BTreeMap::new();
            for e in &removed {
                ops.push(transact_delete(
                    Delete::builder()
                        .table_name(&self.index)
                        .set_key(Some(HashMap::from([
                            ("pk".to_string(), s(index_pk(tp))),
                            ("sk".to_string(), n(e.base_offset)),
                        ])))
                        .condition_expression("attribute_exists(pk)")
                        .build(),
                )?);
                *released.entry(e.object.as_str()).or_default() += 1;
            }
            for (object, count) in &released {
                ops.push(self.refs_update(object, -count)?);
            }
            if !self.transact(ops).await? {
                attempt += 1;
                if attempt > TRANSACTION_ATTEMPTS {
                    return Err(MetadataError::Backend(format!(
                        "truncating {tp} kept conflicting with other writers"
                    )));
                }
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            removed_total += removed.len();
            for object in released.keys() {
                if self.delete_if_unreferenced(object).await? {
                    dead.push(object.to_string());
                }
            }
            let more = removed.len() == items.len() && items.len() == chunk;
            if !more {
                return Ok(Truncation {
                    log_start_offset: start,
                    removed_entries: removed_total,
                    dead_objects: dead,
                });
            }
        }
    }

    async fn replace(
        &self,
        tp: TopicPartition,
        old: &[IndexEntry],
        new: &IndexEntry,
    ) -> Result<Option<Vec<String>>> {
        crate::check_replacement(tp, old, new)?;
        let mut released: BTreeMap<&str, i64> = BTreeMap::new();
        for e in old {
            *released.entry(e.object.as_str()).or_default() += 1;
        }
        if old.len() + released.len() + 2 > MAX_TRANSACTION_ITEMS {
            return Err(MetadataError::Invalid(format!(
                "index replacement of {} entries is over one transaction",
                old.len()
            )));
        }
        let same_object = |e: &IndexEntry| {
            (
                "#o = :old".to_string(),
                HashMap::from([("#o".to_string(), "object".to_string())]),
                HashMap::from([(":old".to_string(), s(e.object.as_str()))]),
            )
        };
        // The new entry takes the first old entry's key; the others are deleted. Each is
        // conditioned on still naming the object the caller compacted.
        let (cond, names, values) = same_object(&old[0]);
        let mut ops = vec![transact_put(
            Put::builder()
                .table_name(&self.index)
                .set_item(Some(entry_item(new)))
                .condition_expression(cond)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build(),
        )?];
        for e in &old[1..] {
            let (cond, names, values) = same_object(e);
            ops.push(transact_delete(
                Delete::builder()
                    .table_name(&self.index)
                    .set_key(Some(HashMap::from([
                        ("pk".to_string(), s(index_pk(tp))),
                        ("sk".to_string(), n(e.base_offset)),
                    ])))
                    .condition_expression(cond)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build(),
            )?);
        }
        for (object, count) in &released {
            ops.push(self.refs_update(object, -count)?);
        }
        ops.push(self.refs_update(&new.object, 1)?);
        let removed = crate::replaced_bytes(old, new);
        if removed > 0 {
            ops.push(transact_update(
                Update::builder()
                    .table_name(&self.meta)
                    .set_key(Some(key(part_pk(tp.topic_id), part_sk(tp.partition))))
                    .update_expression("ADD log_bytes :minus")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":minus", n(-(removed as i64)))
                    .build(),
            )?);
        }
        self.entries.invalidate(&tp);
        let applied = match self.transact(ops).await {
            Ok(applied) => applied,
            // The answer was lost: the new entry tells whether the transaction landed.
            Err(e) => {
                if self.holds_entry(new).await? {
                    true
                } else {
                    return Err(e);
                }
            }
        };
        self.entries.invalidate(&tp);
        if !applied {
            return Ok(None);
        }
        let mut dead = Vec::new();
        for object in released.keys() {
            if self.delete_if_unreferenced(object).await? {
                dead.push(object.to_string());
            }
        }
        Ok(Some(dead))
    }

    /// Whether the index holds exactly this entry (same base offset, same object).
    async fn holds_entry(&self, e: &IndexEntry) -> Result<bool> {
        let k = HashMap::from([
            ("pk".to_string(), s(index_pk(e.tp))),
            ("sk".to_string(), n(e.base_offset)),
        ]);
        Ok(match self.get(&self.index, k).await? {
            Some(item) => get_s(&item, "object")? == e.object,
            None => false,
        })
    }

    fn refs_update(&self, object: &str, delta: i64) -> Result<TransactWriteItem> {
        transact_update(
            Update::builder()
                .table_name(&self.meta)
                .set_key(Some(key("object", s(object))))
                .update_expression("ADD refs :d")
                .expression_attribute_values(":d", n(delta))
                .build(),
        )
    }

    /// Deletes an object's reference-count item when nothing refers to the object any more.
    async fn delete_if_unreferenced(&self, object: &str) -> Result<bool> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.meta)
            .set_key(Some(key("object", s(object))))
            .condition_expression("refs <= :zero")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    /// Removes every index entry of a partition outside any transaction (topic deletion);
    /// returns the objects nothing refers to any more.
    async fn drop_all_entries(&self, tp: TopicPartition) -> Result<Vec<String>> {
        self.entries.invalidate(&tp);
        let items = self
            .query_all(
                self.query_index(tp)
                    .key_condition_expression("pk = :pk")
                    .projection_expression("pk, sk, #o")
                    .expression_attribute_names("#o", "object"),
                None,
            )
            .await?;
        let mut released: BTreeMap<String, i64> = BTreeMap::new();
        let mut deletes = Vec::new();
        for item in &items {
            *released
                .entry(get_s(item, "object")?.to_string())
                .or_default() += 1;
            let mut k = item.clone();
            k.remove("object");
            deletes.push(delete_request(k)?);
        }
        self.batch_write(&self.index, deletes).await?;
        let mut dead = Vec::new();
        for (object, count) in released {
            self.client
                .update_item()
                .table_name(&self.meta)
                .set_key(Some(key("object", s(object.as_str()))))
                .update_expression("ADD refs :d")
                .expression_attribute_values(":d", n(-count))
                .send()
                .await
                .map_err(sdk)?;
            if self.delete_if_unreferenced(&object).await? {
                dead.push(object);
            }
        }
        Ok(dead)
    }

    /// Deletes a group's directory item if the group has no committed offset left.
    async fn tidy_group(&self, group: &str) -> Result<()> {
        let Some(dir) = self.get(&self.meta, key("groups", s(group))).await? else {
            return Ok(());
        };
        let commits = get_n(&dir, "commits")?;
        let left = self
            .query_all(self.query_pk(&format!("group#{group}")).limit(1), Some(1))
            .await?;
        if !left.is_empty() {
            return Ok(());
        }
        // Only if no commit happened meanwhile (a commit bumps `commits`).
        let result = self
            .client
            .delete_item()
            .table_name(&self.meta)
            .set_key(Some(key("groups", s(group))))
            .condition_expression("commits = :c")
            .expression_attribute_values(":c", n(commits))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(sdk(e)),
        }
    }

    /// Commits one chunk of partition commits (each partition at most once) as one
    /// transaction; fills `outcomes` for the commits it settles.
    async fn commit_chunk(
        &self,
        commits: &[PartitionCommit],
        chunk: Vec<usize>,
        outcomes: &mut [Option<CommitOutcome>],
    ) -> Result<()> {
        let mut pending = chunk;
        let mut attempt = 0;
        while !pending.is_empty() {
            let mut ops = Vec::new();
            let mut refs: BTreeMap<&str, i64> = BTreeMap::new();
            let mut new_docs = Vec::new();
            for &i in &pending {
                let c = &commits[i];
                let e = &c.entry;
                ops.push(transact_update(
                    Update::builder()
                        .table_name(&self.meta)
                        .set_key(Some(key(part_pk(e.tp.topic_id), part_sk(e.tp.partition))))
                        .update_expression("SET next_offset = :next ADD log_bytes :len")
                        .condition_expression("leader_epoch = :epoch AND next_offset = :base")
                        .expression_attribute_values(":next", n(e.last_offset + 1))
                        .expression_attribute_values(":len", n(e.length))
                        .expression_attribute_values(":epoch", n(c.leader_epoch))
                        .expression_attribute_values(":base", n(e.base_offset))
                        .build(),
                )?);
                ops.push(transact_put(
                    Put::builder()
                        .table_name(&self.index)
                        .set_item(Some(entry_item(e)))
                        .condition_expression("attribute_not_exists(pk)")
                        .build(),
                )?);
                *refs.entry(e.object.as_str()).or_default() += 1;
                if !c.producers.is_empty() {
                    let mut doc = (*self.producer_doc(e.tp).await?).clone();
                    for p in &c.producers {
                        let kept = doc.entry(p.producer_id).or_default();
                        kept.retain(|b| b.producer_epoch == p.producer_epoch);
                        kept.push(*p);
                        if kept.len() > PRODUCER_BATCHES_KEPT {
                            kept.drain(..kept.len() - PRODUCER_BATCHES_KEPT);
                        }
                    }
                    if doc.len() > MAX_PRODUCERS_PER_PARTITION {
                        // Forget the producers that wrote least recently.
                        let mut by_age: Vec<(Offset, i64)> = doc
                            .iter()
                            .map(|(id, b)| (b.last().map(|b| b.last_offset).unwrap_or(-1), *id))
                            .collect();
                        by_age.sort_unstable();
                        for (_, id) in &by_age[..doc.len() - MAX_PRODUCERS_PER_PARTITION] {
                            doc.remove(id);
                        }
                    }
                    let json = encode_text(&doc)?;
                    let mut item = key(producers_pk(e.tp.topic_id), part_sk(e.tp.partition));
                    item.insert("doc".into(), s(json));
                    ops.push(transact_put(
                        Put::builder()
                            .table_name(&self.meta)
                            .set_item(Some(item))
                            .build(),
                    )?);
                    new_docs.push((e.tp, Arc::new(doc)));
                }
            }
            for (object, count) in &refs {
                ops.push(self.refs_update(object, *count)?);
            }
            let sent = self.transact(ops).await;
            if let Ok(true) = sent {
                let mut cache = self.lock_producers();
                for (tp, doc) in new_docs {
                    cache.insert(tp, doc);
                }
                drop(cache);
                for &i in &pending {
                    outcomes[i] = Some(Ok(()));
                    let e = &commits[i].entry;
                    self.remember_entries(e.tp, std::slice::from_ref(e));
                }
                return Ok(());
            }
            // A condition failed, or the outcome is unknown (a timeout after the request was
            // sent): settle each partition from what the table now holds.
            let mut still = Vec::new();
            let mut applied = Vec::new();
            for &i in &pending {
                let c = &commits[i];
                let tp = c.entry.tp;
                let refused = match self.read_partition(tp).await? {
                    None => Some(CommitRefused::UnknownPartition),
                    Some(st)
                        if st.leader_epoch == c.leader_epoch
                            && st.next_offset == c.entry.last_offset + 1
                            && self.holds_entry(&c.entry).await? =>
                    {
                        // This very commit landed (the failure came after it).
                        applied.push(i);
                        continue;
                    }
                    Some(st) if st.leader_epoch != c.leader_epoch => {
                        Some(CommitRefused::EpochFenced {
                            current: st.leader_epoch,
                            expected: c.leader_epoch,
                        })
                    }
                    Some(st) if st.next_offset != c.entry.base_offset => {
                        Some(CommitRefused::OffsetMismatch {
                            current: st.next_offset,
                            expected: c.entry.base_offset,
                        })
                    }
                    Some(_) => None,
                };
                match refused {
                    Some(r) => {
                        self.lock_producers().remove(&tp);
                        outcomes[i] = Some(Err(r));
                    }
                    None => still.push(i),
                }
            }
            for i in applied {
                outcomes[i] = Some(Ok(()));
                // Its producer states are in the table; re-read them when next needed.
                self.lock_producers().remove(&commits[i].entry.tp);
            }
            if still.len() == pending.len() {
                // Nothing was written; an error means the table cannot be reached reliably.
                sent?;
                // Every partition matches: an index item was in the way (or a race); retry.
                attempt += 1;
                if attempt > TRANSACTION_ATTEMPTS {
                    return Err(MetadataError::Backend(
                        "index commit kept failing its conditions".into(),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
            pending = still;
        }
        Ok(())
    }
}

fn transact_update(
    u: std::result::Result<Update, aws_sdk_dynamodb::error::BuildError>,
) -> Result<TransactWriteItem> {
    Ok(TransactWriteItem::builder().update(build(u)?).build())
}

fn transact_put(
    p: std::result::Result<Put, aws_sdk_dynamodb::error::BuildError>,
) -> Result<TransactWriteItem> {
    Ok(TransactWriteItem::builder().put(build(p)?).build())
}

fn transact_delete(
    d: std::result::Result<Delete, aws_sdk_dynamodb::error::BuildError>,
) -> Result<TransactWriteItem> {
    Ok(TransactWriteItem::builder().delete(build(d)?).build())
}

fn put_request(item: Item) -> Result<WriteRequest> {
    Ok(WriteRequest::builder()
        .put_request(build(PutRequest::builder().set_item(Some(item)).build())?)
        .build())
}

fn delete_request(k: Item) -> Result<WriteRequest> {
    Ok(WriteRequest::builder()
        .delete_request(build(DeleteRequest::builder().set_key(Some(k)).build())?)
        .build())
}

#[async_trait]
impl MetadataStore for DynamoStore {
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "weir_metadata_dynamodb_requests",
            "DynamoDB requests sent (every attempt), by operation",
            self.counter.requests.clone(),
        );
    }

    async fn cluster_id(&self) -> Result<String> {
        self.cluster
            .get_or_try_init(|| async {
                let mut item = key("cluster", s("id"));
                item.insert("value".into(), s(uuid::Uuid::new_v4().simple().to_string()));
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.meta)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .send()
                    .await;
                if let Err(e) = result {
                    if !condition_failed(&e) {
                        return Err(sdk(e));
                    }
                }
                let item = self
                    .get(&self.meta, key("cluster", s("id")))
                    .await?
                    .ok_or_else(|| MetadataError::Corrupt("cluster id vanished".into()))?;
                Ok(get_s(&item, "value")?.to_string())
            })
            .await
            .cloned()
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        if partitions < 1 {
            return Err(MetadataError::Invalid(
                "partition count must be at least 1".into(),
            ));
        }
        if self.read_topic(name).await?.is_some() {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: TopicId::random(),
            partitions,
            configs,
            created_ms: now_ms(),
        };
        // Partition items first (keyed by the new topic id, so nobody sees them yet), then
        // the topic item, which only one creator can write.
        let puts = (0..partitions)
            .map(|p| put_request(partition_item(record.id, &PartitionState::empty(p))))
            .collect::<Result<Vec<_>>>()?;
        self.batch_write(&self.meta, puts).await?;
        let doc = encode_text(&record)?;
        let mut item = key("topic", s(name));
        item.insert("doc".into(), s(doc));
        item.insert("id".into(), s(record.id.to_string()));
        let result = self
            .client
            .put_item()
            .table_name(&self.meta)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(record),
            Err(e) if condition_failed(&e) => {
                let deletes = (0..partitions)
                    .map(|p| delete_request(key(part_pk(record.id), part_sk(p))))
                    .collect::<Result<Vec<_>>>()?;
                self.batch_write(&self.meta, deletes).await?;
                Err(MetadataError::TopicExists(name.to_string()))
            }
            Err(e) => Err(sdk(e)),
        }
    }

    async fn delete_topic(&self, name: &str) -> Result<(TopicRecord, Vec<String>)> {
        let (record, _) = self
            .read_topic(name)
            .await?
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        // The topic item goes first (only if it is still this topic): from then on nobody
        // finds the topic; the rest is cleanup keyed by its unique id.
        let result = self
            .client
            .delete_item()
            .table_name(&self.meta)
            .set_key(Some(key("topic", s(name))))
            .condition_expression("id = :id")
            .expression_attribute_values(":id", s(record.id.to_string()))
            .send()
            .await;
        if let Err(e) = result {
            if condition_failed(&e) {
                return Err(MetadataError::UnknownTopic(name.to_string()));
            }
            return Err(sdk(e));
        }
        let mut dead = Vec::new();
        let mut deletes = Vec::new();
        for p in 0..record.partitions {
            let tp = TopicPartition {
                topic_id: record.id,
                partition: p,
            };
            dead.extend(self.drop_all_entries(tp).await?);
            deletes.push(delete_request(key(part_pk(record.id), part_sk(p)))?);
            self.lock_producers().remove(&tp);
        }
        for item in self
            .query_all(self.query_pk(&producers_pk(record.id)), None)
            .await?
        {
            deletes.push(delete_request(key(
                producers_pk(record.id),
                s(get_s(&item, "sk")?),
            ))?);
        }
        // Committed offsets of a deleted topic go with it, as in Kafka.
        for group in self.offset_groups().await? {
            let pk = format!("group#{group}");
            let items = self
                .query_all(
                    self.query_pk(&pk)
                        .key_condition_expression("pk = :pk AND begins_with(sk, :t)")
                        .expression_attribute_values(":t", s(format!("{name}#"))),
                    None,
                )
                .await?;
            for item in &items {
                deletes.push(delete_request(key(pk.clone(), s(get_s(item, "sk")?)))?);
            }
        }
        self.batch_write(&self.meta, deletes).await?;
        Ok((record, dead))
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>> {
        Ok(self.read_topic(name).await?.map(|(record, _)| record))
    }

    async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        self.query_all(self.query_pk("topic"), None)
            .await?
            .iter()
            .map(|item| decode(get_s(item, "doc")?.as_bytes()))
            .collect()
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicRecord> {
        self.update_topic(name, |record| {
            if total <= record.partitions {
                return Err(MetadataError::Invalid(format!(
                    "topic '{}' has {} partitions; the new count {total} must be larger",
                    record.name, record.partitions
                )));
            }
            let states = (record.partitions..total)
                .map(PartitionState::empty)
                .collect();
            record.partitions = total;
            Ok(Some(states))
        })
        .await
    }

    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        self.update_topic(name, |record| {
            record.configs = configs.clone();
            Ok(None)
        })
        .await
    }

    async fn acquire_partitions(
        &self,
        topic: TopicId,
        from: PartitionIndex,
    ) -> Result<Vec<PartitionTail>> {
        let partitions: Vec<PartitionIndex> = self
            .query_all(
                self.query_pk(&part_pk(topic))
                    .key_condition_expression("pk = :pk AND sk >= :from")
                    .expression_attribute_values(":from", part_sk(from))
                    .projection_expression("sk"),
                None,
            )
            .await?
            .iter()
            .map(|item| {
                let p = get_s(item, "sk")?;
                p.parse()
                    .map_err(|_| MetadataError::Corrupt(format!("bad partition key {p}")))
            })
            .collect::<Result<_>>()?;
        let mut docs: HashMap<PartitionIndex, ProducerDoc> = HashMap::new();
        for item in self
            .query_all(
                self.query_pk(&producers_pk(topic))
                    .key_condition_expression("pk = :pk AND sk >= :from")
                    .expression_attribute_values(":from", part_sk(from)),
                None,
            )
            .await?
        {
            let p: PartitionIndex = get_s(&item, "sk")?
                .parse()
                .map_err(|_| MetadataError::Corrupt("bad producers key".into()))?;
            docs.insert(p, decode(get_s(&item, "doc")?.as_bytes())?);
        }
        let states: Vec<PartitionState> = futures::stream::iter(partitions)
            .map(|p| async move {
                let out = self
                    .client
                    .update_item()
                    .table_name(&self.meta)
                    .set_key(Some(key(part_pk(topic), part_sk(p))))
                    .update_expression("ADD leader_epoch :one")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":one", n(1))
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await
                    .map_err(sdk)?;
                partition_from(&out.attributes.unwrap_or_default())
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut tails = Vec::with_capacity(states.len());
        let mut cache = self.lock_producers();
        for state in states {
            let tp = TopicPartition {
                topic_id: topic,
                partition: state.partition,
            };
            self.entries.invalidate(&tp);
            let doc = docs.remove(&state.partition).unwrap_or_default();
            let mut batches: Vec<ProducerBatchState> = doc.values().flatten().copied().collect();
            batches.sort_by_key(|b| (b.producer_id, b.base_offset));
            cache.insert(tp, Arc::new(doc));
            tails.push(PartitionTail {
                state,
                producers: batches,
            });
        }
        Ok(tails)
    }

    async fn take_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        expected_epoch: LeaderEpoch,
    ) -> Result<Option<PartitionTail>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.meta)
            .set_key(Some(key(part_pk(tp.topic_id), part_sk(tp.partition))))
            .update_expression("SET leader = :node ADD leader_epoch :one")
            .condition_expression("attribute_exists(pk) AND leader_epoch = :expected")
            .expression_attribute_values(":node", n(node))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expected", n(expected_epoch))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let state = match result {
            Ok(out) => partition_from(&out.attributes.unwrap_or_default())?,
            Err(e) if condition_failed(&e) => return Ok(None),
            Err(e) => return Err(sdk(e)),
        };
        self.entries.invalidate(&tp);
        Ok(Some(self.tail_of(tp, state).await?))
    }

    async fn release_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        epoch: LeaderEpoch,
    ) -> Result<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.meta)
            .set_key(Some(key(part_pk(tp.topic_id), part_sk(tp.partition))))
            .update_expression("SET leader = :none")
            .condition_expression("leader = :node AND leader_epoch = :epoch")
            .expression_attribute_values(":none", n(crate::NO_LEADER))
            .expression_attribute_values(":node", n(node))
            .expression_attribute_values(":epoch", n(epoch))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn partition_states(&self, topic: TopicId) -> Result<Vec<PartitionState>> {
        let mut states = self
            .query_all(self.query_pk(&part_pk(topic)), None)
            .await?
            .iter()
            .map(partition_from)
            .collect::<Result<Vec<_>>>()?;
        states.sort_by_key(|s| s.partition);
        Ok(states)
    }

    async fn partition_tail(&self, tp: TopicPartition) -> Result<Option<PartitionTail>> {
        let Some(state) = self.read_partition(tp).await? else {
            return Ok(None);
        };
        Ok(Some(self.tail_of(tp, state).await?))
    }

    async fn commit_index(&self, commits: Vec<PartitionCommit>) -> Result<Vec<CommitOutcome>> {
        // Per partition: the partition update, the index item, maybe the producers item; plus
        // one reference-count update per object.
        let per_transaction = (MAX_TRANSACTION_ITEMS - 4) / 3;
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut objects = std::collections::HashSet::new();
        for (i, c) in commits.iter().enumerate() {
            let repeated = current.iter().any(|&j| commits[j].entry.tp == c.entry.tp);
            let new_object = !objects.contains(c.entry.object.as_str());
            if repeated || current.len() >= per_transaction || (new_object && objects.len() >= 3) {
                chunks.push(std::mem::take(&mut current));
                objects.clear();
            }
            objects.insert(c.entry.object.as_str());
            current.push(i);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; commits.len()];
        for chunk in chunks {
            self.commit_chunk(&commits, chunk, &mut outcomes).await?;
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| MetadataError::Corrupt("commit left unsettled".into())))
            .collect()
    }

    async fn index_from(
        &self,
        tp: TopicPartition,
        offset: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let after = match self.entries.get(&tp) {
            Some(run)
                if run.first().is_some_and(|e| e.base_offset <= offset)
                    && run.last().is_some_and(|e| e.last_offset >= offset) =>
            {
                let at = run.partition_point(|e| e.last_offset < offset);
                out.extend(run[at..].iter().take(limit).cloned());
                if out.len() == limit {
                    return Ok(out);
                }
                run.last().map(|e| e.base_offset).unwrap_or(offset)
            }
            _ => {
                // The entry holding `offset` starts at or before it.
                let holder = self
                    .query_all(
                        self.query_index(tp)
                            .key_condition_expression("pk = :pk AND sk <= :o")
                            .expression_attribute_values(":o", n(offset))
                            .scan_index_forward(false)
                            .limit(1),
                        Some(1),
                    )
                    .await?;
                for item in &holder {
                    let e = entry_from(tp, item)?;
                    if e.last_offset >= offset {
                        out.push(e);
                    }
                }
                offset
            }
        };
        let want = limit - out.len();
        let rest = self
            .query_all(
                self.query_index(tp)
                    .key_condition_expression("pk = :pk AND sk > :o")
                    .expression_attribute_values(":o", n(after))
                    .limit(want.min(1000) as i32),
                Some(want),
            )
            .await?;
        for item in &rest {
            out.push(entry_from(tp, item)?);
        }
        // Only a contiguous run is worth remembering.
        let contiguous = out
            .windows(2)
            .all(|w| w[0].last_offset + 1 == w[1].base_offset);
        if contiguous {
            self.remember_entries(tp, &out);
        }
        Ok(out)
    }

    async fn index_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        let query = self
            .query_index(tp)
            .key_condition_expression("pk = :pk")
            .filter_expression("ts >= :t")
            .expression_attribute_values(":t", n(timestamp));
        let first = self.query_all(query, Some(1)).await?;
        first.first().map(|item| entry_from(tp, item)).transpose()
    }

    async fn index_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexEntry>> {
        let items = self
            .query_all(
                self.query_index(tp).key_condition_expression("pk = :pk"),
                None,
            )
            .await?;
        let mut best: Option<IndexEntry> = None;
        for item in &items {
            let e = entry_from(tp, item)?;
            if best
                .as_ref()
                .is_none_or(|b| e.max_timestamp > b.max_timestamp)
            {
                best = Some(e);
            }
        }
        Ok(best)
    }

    async fn replace_index(
        &self,
        tp: TopicPartition,
        old: Vec<IndexEntry>,
        new: IndexEntry,
    ) -> Result<Option<Vec<String>>> {
        self.replace(tp, &old, &new).await
    }

    async fn delete_records(&self, tp: TopicPartition, offset: Offset) -> Result<Truncation> {
        let state = self
            .read_partition(tp)
            .await?
            .ok_or(MetadataError::UnknownPartition(tp))?;
        if offset > state.next_offset || offset < 0 {
            return Err(MetadataError::Invalid(format!(
                "offset {offset} is outside the log [0, {}]",
                state.next_offset
            )));
        }
        self.truncate(tp, Cut::Before(offset)).await
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
    ) -> Result<Truncation> {
        self.truncate(tp, Cut::Retention(limits)).await
    }

    async fn allocate_producer_id(&self) -> Result<i64> {
        let out = self
            .client
            .update_item()
            .table_name(&self.meta)
            .set_key(Some(key("counter", s("producer_id"))))
            .update_expression("SET #v = if_not_exists(#v, :start) + :one")
            .expression_attribute_names("#v", "value")
            .expression_attribute_values(":start", n(999))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(sdk)?;
        get_n(&out.attributes.unwrap_or_default(), "value")
    }

    async fn live_objects(&self) -> Result<Vec<String>> {
        self.query_all(self.query_pk("object"), None)
            .await?
            .iter()
            .filter(|item| get_n(item, "refs").is_ok_and(|r| r > 0))
            .map(|item| get_s(item, "sk").map(str::to_string))
            .collect()
    }

    async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<()> {
        // The last commit of a partition wins; a transaction may not touch an item twice.
        let mut latest: BTreeMap<(String, PartitionIndex), CommittedOffset> = BTreeMap::new();
        for o in offsets {
            latest.insert((o.topic.clone(), o.partition), o);
        }
        let offsets: Vec<CommittedOffset> = latest.into_values().collect();
        let pk = format!("group#{group}");
        for chunk in offsets.chunks(MAX_TRANSACTION_ITEMS - 1) {
            let mut ops = Vec::with_capacity(chunk.len() + 1);
            for o in chunk {
                let mut item = key(pk.clone(), s(offset_sk(&o.topic, o.partition)));
                let doc = encode_text(o)?;
                item.insert("doc".into(), s(doc));
                ops.push(transact_put(
                    Put::builder()
                        .table_name(&self.meta)
                        .set_item(Some(item))
                        .build(),
                )?);
            }
            ops.push(transact_update(
                Update::builder()
                    .table_name(&self.meta)
                    .set_key(Some(key("groups", s(group))))
                    .update_expression("ADD commits :one")
                    .expression_attribute_values(":one", n(1))
                    .build(),
            )?);
            if !self.transact(ops).await? {
                return Err(MetadataError::Backend(
                    "offset commit refused by a condition".into(),
                ));
            }
        }
        Ok(())
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        let mut out: Vec<CommittedOffset> = self
            .query_all(self.query_pk(&format!("group#{group}")), None)
            .await?
            .iter()
            .map(|item| decode(get_s(item, "doc")?.as_bytes()))
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, PartitionIndex)>>,
    ) -> Result<usize> {
        let pk = format!("group#{group}");
        let keys: Vec<String> = match partitions {
            Some(list) => list.iter().map(|(t, p)| offset_sk(t, *p)).collect(),
            None => self
                .query_all(self.query_pk(&pk).projection_expression("sk"), None)
                .await?
                .iter()
                .map(|item| get_s(item, "sk").map(str::to_string))
                .collect::<Result<_>>()?,
        };
        let mut deleted = 0;
        for sk in keys {
            let out = self
                .client
                .delete_item()
                .table_name(&self.meta)
                .set_key(Some(key(pk.clone(), s(sk))))
                .return_values(ReturnValue::AllOld)
                .send()
                .await
                .map_err(sdk)?;
            if out.attributes.is_some_and(|a| !a.is_empty()) {
                deleted += 1;
            }
        }
        self.tidy_group(group).await?;
        Ok(deleted)
    }

    async fn offset_groups(&self) -> Result<Vec<String>> {
        self.query_all(self.query_pk("groups"), None)
            .await?
            .iter()
            .map(|item| get_s(item, "sk").map(str::to_string))
            .collect()
    }

    async fn record_get(&self, namespace: &str, key_: &str) -> Result<Option<Vec<u8>>> {
        let item = self
            .get(&self.meta, key(format!("record#{namespace}"), s(key_)))
            .await?;
        match item.as_ref().and_then(|i| i.get("value")) {
            Some(AttributeValue::B(blob)) => Ok(Some(blob.clone().into_inner())),
            Some(_) => Err(MetadataError::Corrupt("record value is not binary".into())),
            None => Ok(None),
        }
    }

    async fn record_put(
        &self,
        namespace: &str,
        key_: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let mut item = key(format!("record#{namespace}"), s(key_));
        item.insert(
            "value".into(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(value)),
        );
        let mut put = self
            .client
            .put_item()
            .table_name(&self.meta)
            .set_item(Some(item));
        if create_only {
            put = put.condition_expression("attribute_not_exists(pk)");
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => {
                Err(MetadataError::RecordExists(format!("{namespace}/{key_}")))
            }
            Err(e) => Err(sdk(e)),
        }
    }

    async fn record_delete(&self, namespace: &str, key_: &str) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.meta)
            .set_key(Some(key(format!("record#{namespace}"), s(key_))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    async fn record_list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.query_all(self.query_pk(&format!("record#{namespace}")), None)
            .await?
            .iter()
            .map(|item| {
                let k = get_s(item, "sk")?.to_string();
                match item.get("value") {
                    Some(AttributeValue::B(blob)) => Ok((k, blob.clone().into_inner())),
                    _ => Err(MetadataError::Corrupt("record value is not binary".into())),
                }
            })
            .collect()
    }
}
