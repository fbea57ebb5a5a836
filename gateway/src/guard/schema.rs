//! The guard's schema tables: one field list per request, transcribed from kafka-protocol's
//! generated decoders, looked up by [`ApiKey`] with [`schema`]. The versions each one is used
//! for come from [`crate::handlers::SUPPORTED`], not from here.

use kafka_protocol::messages::ApiKey;

/// A field's wire type, as kafka-protocol decodes it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ty {
    /// int8, int16, int32, int64, bool or uuid: this many bytes.
    Fixed(usize),
    /// int16 length (flexible: unsigned varint length + 1), then the bytes.
    Str { nullable: bool },
    /// int32 length (flexible: unsigned varint length + 1), then the bytes. Records are these.
    Bytes { nullable: bool },
    /// int32 count (flexible: unsigned varint count + 1), then the elements.
    Array { nullable: bool, elem: Elem },
    /// A struct written in place (here only as a tagged field).
    Struct(&'static [Field]),
}

/// An array element.
#[derive(Debug, Clone, Copy)]
pub(super) enum Elem {
    Fixed(usize),
    /// A string that may not be null.
    Str,
    Struct(&'static [Field]),
}

/// One field of a struct: its type, the versions it is on the wire, and its tag if tagged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub(super) ty: Ty,
    pub(super) min: i16,
    pub(super) max: i16,
    pub(super) tag: Option<u32>,
}

impl Field {
    pub(super) fn in_version(&self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }
}

/// One request's layout: the first flexible version (compact lengths and tagged-field sections
/// in every struct) and the fields of its top-level struct. Which versions are guarded is not
/// here: it is [`crate::handlers::SUPPORTED`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Schema {
    pub(super) flexible_from: i16,
    pub(super) body: &'static [Field],
}

pub(super) const NEVER: i16 = i16::MAX;

pub(super) const I8: Ty = Ty::Fixed(1);
pub(super) const BOOL: Ty = Ty::Fixed(1);
pub(super) const I16: Ty = Ty::Fixed(2);
pub(super) const I32: Ty = Ty::Fixed(4);
pub(super) const I64: Ty = Ty::Fixed(8);
pub(super) const UUID: Ty = Ty::Fixed(16);
pub(super) const STR: Ty = Ty::Str { nullable: false };
pub(super) const NSTR: Ty = Ty::Str { nullable: true };
pub(super) const BYTES: Ty = Ty::Bytes { nullable: false };
pub(super) const RECORDS: Ty = Ty::Bytes { nullable: true };
pub(super) const I32S: Ty = Ty::Array {
    nullable: false,
    elem: Elem::Fixed(4),
};
pub(super) const STRS: Ty = Ty::Array {
    nullable: false,
    elem: Elem::Str,
};
pub(super) const NSTRS: Ty = Ty::Array {
    nullable: true,
    elem: Elem::Str,
};

/// A non-nullable array of structs.
pub(super) const fn structs(fields: &'static [Field]) -> Ty {
    Ty::Array {
        nullable: false,
        elem: Elem::Struct(fields),
    }
}

/// A nullable array of structs.
pub(super) const fn nstructs(fields: &'static [Field]) -> Ty {
    Ty::Array {
        nullable: true,
        elem: Elem::Struct(fields),
    }
}

/// In every version.
pub(super) const fn all(ty: Ty) -> Field {
    between(0, NEVER, ty)
}

/// In versions `min` and later.
pub(super) const fn since(min: i16, ty: Ty) -> Field {
    between(min, NEVER, ty)
}

/// In versions up to `max`.
pub(super) const fn until(max: i16, ty: Ty) -> Field {
    between(0, max, ty)
}

pub(super) const fn between(min: i16, max: i16, ty: Ty) -> Field {
    Field {
        ty,
        min,
        max,
        tag: None,
    }
}

/// A known tagged field, valid from version `min`.
pub(super) const fn tagged(tag: u32, min: i16, ty: Ty) -> Field {
    Field {
        ty,
        min,
        max: NEVER,
        tag: Some(tag),
    }
}

// ---------------------------------------------------------------------------------------------
// The schemas, transcribed from kafka-protocol 0.18.0 src/messages/*_request.rs (`impl Decodable`),
// in decode order. A field's Rust type being `Option<_>` is what makes it nullable here.

const API_VERSIONS: &[Field] = &[since(3, STR), since(3, STR)];

const METADATA_TOPIC: &[Field] = &[since(10, UUID), all(NSTR)];
const METADATA: &[Field] = &[
    all(nstructs(METADATA_TOPIC)),
    since(4, BOOL),
    between(8, 10, BOOL),
    since(8, BOOL),
];

const PRODUCE_PARTITION: &[Field] = &[all(I32), all(RECORDS)];
const PRODUCE_TOPIC: &[Field] = &[
    until(12, STR),
    since(13, UUID),
    all(structs(PRODUCE_PARTITION)),
];
const PRODUCE: &[Field] = &[all(NSTR), all(I16), all(I32), all(structs(PRODUCE_TOPIC))];

const FETCH_PARTITION: &[Field] = &[
    all(I32),
    since(9, I32),
    all(I64),
    since(12, I32),
    since(5, I64),
    all(I32),
    tagged(0, 17, UUID),
    tagged(1, 18, I64),
];
const FETCH_TOPIC: &[Field] = &[
    until(12, STR),
    since(13, UUID),
    all(structs(FETCH_PARTITION)),
];
const FETCH_FORGOTTEN_TOPIC: &[Field] = &[between(7, 12, STR), since(13, UUID), since(7, I32S)];
const FETCH_REPLICA_STATE: &[Field] = &[since(15, I32), since(15, I64)];
const FETCH: &[Field] = &[
    until(14, I32),
    all(I32),
    all(I32),
    all(I32),
    all(I8),
    since(7, I32),
    since(7, I32),
    all(structs(FETCH_TOPIC)),
    since(7, structs(FETCH_FORGOTTEN_TOPIC)),
    since(11, STR),
    tagged(0, 0, NSTR),
    tagged(1, 15, Ty::Struct(FETCH_REPLICA_STATE)),
];

const LIST_OFFSETS_PARTITION: &[Field] = &[all(I32), since(4, I32), all(I64)];
const LIST_OFFSETS_TOPIC: &[Field] = &[all(STR), all(structs(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[Field] = &[
    all(I32),
    since(2, I8),
    all(structs(LIST_OFFSETS_TOPIC)),
    since(10, I32),
];

const INIT_PRODUCER_ID: &[Field] = &[all(NSTR), all(I32), since(3, I64), since(3, I16)];

const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[all(I32), all(I32S)];
const CREATE_TOPICS_CONFIG: &[Field] = &[all(STR), all(NSTR)];
const CREATE_TOPICS_TOPIC: &[Field] = &[
    all(STR),
    all(I32),
    all(I16),
    all(structs(CREATE_TOPICS_ASSIGNMENT)),
    all(structs(CREATE_TOPICS_CONFIG)),
];
const CREATE_TOPICS: &[Field] = &[all(structs(CREATE_TOPICS_TOPIC)), all(I32), all(BOOL)];

const DELETE_TOPICS_STATE: &[Field] = &[since(6, NSTR), since(6, UUID)];
const DELETE_TOPICS: &[Field] = &[
    since(6, structs(DELETE_TOPICS_STATE)),
    until(5, STRS),
    all(I32),
];

const CREATE_PARTITIONS_ASSIGNMENT: &[Field] = &[all(I32S)];
const CREATE_PARTITIONS_TOPIC: &[Field] = &[
    all(STR),
    all(I32),
    all(nstructs(CREATE_PARTITIONS_ASSIGNMENT)),
];
const CREATE_PARTITIONS: &[Field] = &[all(structs(CREATE_PARTITIONS_TOPIC)), all(I32), all(BOOL)];

const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[all(I8), all(STR), all(NSTRS)];
const DESCRIBE_CONFIGS: &[Field] = &[
    all(structs(DESCRIBE_CONFIGS_RESOURCE)),
    all(BOOL),
    since(3, BOOL),
];

const ALTER_CONFIGS_CONFIG: &[Field] = &[all(STR), all(NSTR)];
const ALTER_CONFIGS_RESOURCE: &[Field] = &[all(I8), all(STR), all(structs(ALTER_CONFIGS_CONFIG))];
const ALTER_CONFIGS: &[Field] = &[all(structs(ALTER_CONFIGS_RESOURCE)), all(BOOL)];

const INCREMENTAL_ALTER_CONFIGS_CONFIG: &[Field] = &[all(STR), all(I8), all(NSTR)];
const INCREMENTAL_ALTER_CONFIGS_RESOURCE: &[Field] = &[
    all(I8),
    all(STR),
    all(structs(INCREMENTAL_ALTER_CONFIGS_CONFIG)),
];
const INCREMENTAL_ALTER_CONFIGS: &[Field] =
    &[all(structs(INCREMENTAL_ALTER_CONFIGS_RESOURCE)), all(BOOL)];

const DESCRIBE_CLUSTER: &[Field] = &[all(BOOL), since(1, I8), since(2, BOOL)];

const DELETE_RECORDS_PARTITION: &[Field] = &[all(I32), all(I64)];
const DELETE_RECORDS_TOPIC: &[Field] = &[all(STR), all(structs(DELETE_RECORDS_PARTITION))];
const DELETE_RECORDS: &[Field] = &[all(structs(DELETE_RECORDS_TOPIC)), all(I32)];

const FIND_COORDINATOR: &[Field] = &[until(3, STR), since(1, I8), since(4, STRS)];

const JOIN_GROUP_PROTOCOL: &[Field] = &[all(STR), all(BYTES)];
const JOIN_GROUP: &[Field] = &[
    all(STR),
    all(I32),
    since(1, I32),
    all(STR),
    since(5, NSTR),
    all(STR),
    all(structs(JOIN_GROUP_PROTOCOL)),
    since(8, NSTR),
];

const SYNC_GROUP_ASSIGNMENT: &[Field] = &[all(STR), all(BYTES)];
const SYNC_GROUP: &[Field] = &[
    all(STR),
    all(I32),
    all(STR),
    since(3, NSTR),
    since(5, NSTR),
    since(5, NSTR),
    all(structs(SYNC_GROUP_ASSIGNMENT)),
];

const HEARTBEAT: &[Field] = &[all(STR), all(I32), all(STR), since(3, NSTR)];

const LEAVE_GROUP_MEMBER: &[Field] = &[since(3, STR), since(3, NSTR), since(5, NSTR)];
const LEAVE_GROUP: &[Field] = &[
    all(STR),
    until(2, STR),
    since(3, structs(LEAVE_GROUP_MEMBER)),
];

const OFFSET_COMMIT_PARTITION: &[Field] = &[all(I32), all(I64), since(6, I32), all(NSTR)];
const OFFSET_COMMIT_TOPIC: &[Field] = &[all(STR), all(structs(OFFSET_COMMIT_PARTITION))];
const OFFSET_COMMIT: &[Field] = &[
    all(STR),
    all(I32),
    all(STR),
    since(7, NSTR),
    until(4, I64),
    all(structs(OFFSET_COMMIT_TOPIC)),
];

const OFFSET_FETCH_TOPIC: &[Field] = &[until(7, STR), until(7, I32S)];
const OFFSET_FETCH_GROUP_TOPIC: &[Field] = &[since(8, STR), since(8, I32S)];
const OFFSET_FETCH_GROUP: &[Field] = &[
    since(8, STR),
    since(9, NSTR),
    since(9, I32),
    since(8, nstructs(OFFSET_FETCH_GROUP_TOPIC)),
];
const OFFSET_FETCH: &[Field] = &[
    until(7, STR),
    until(7, nstructs(OFFSET_FETCH_TOPIC)),
    since(8, structs(OFFSET_FETCH_GROUP)),
    since(7, BOOL),
];

const DESCRIBE_GROUPS: &[Field] = &[all(STRS), since(3, BOOL)];

const LIST_GROUPS: &[Field] = &[since(4, STRS), since(5, STRS)];

const DELETE_GROUPS: &[Field] = &[all(STRS)];

const OFFSET_DELETE_PARTITION: &[Field] = &[all(I32)];
const OFFSET_DELETE_TOPIC: &[Field] = &[all(STR), all(structs(OFFSET_DELETE_PARTITION))];
const OFFSET_DELETE: &[Field] = &[all(STR), all(structs(OFFSET_DELETE_TOPIC))];

const CONSUMER_GROUP_HEARTBEAT_TOPIC: &[Field] = &[all(UUID), all(I32S)];
const CONSUMER_GROUP_HEARTBEAT: &[Field] = &[
    all(STR),
    all(STR),
    all(I32),
    all(NSTR),
    all(NSTR),
    all(I32),
    all(NSTRS),
    since(1, NSTR),
    all(NSTR),
    all(nstructs(CONSUMER_GROUP_HEARTBEAT_TOPIC)),
];

const CONSUMER_GROUP_DESCRIBE: &[Field] = &[all(STRS), all(BOOL)];

const SASL_HANDSHAKE: &[Field] = &[all(STR)];

const SASL_AUTHENTICATE: &[Field] = &[all(BYTES)];

/// The schema of `key`'s request, for whichever versions [`crate::handlers::SUPPORTED`] lists.
/// Every supported key has one and every key here is supported (tested in `tests.rs`); the
/// round-trip tests check each schema against kafka-protocol at every supported version, so
/// raising a version in `SUPPORTED` fails them until the fields it adds are transcribed here.
pub(super) fn schema(key: ApiKey) -> Option<Schema> {
    use ApiKey as K;
    let (flexible_from, body) = match key {
        K::Produce => (9, PRODUCE),
        K::Fetch => (12, FETCH),
        K::ListOffsets => (6, LIST_OFFSETS),
        K::Metadata => (9, METADATA),
        K::OffsetCommit => (8, OFFSET_COMMIT),
        K::OffsetFetch => (6, OFFSET_FETCH),
        K::FindCoordinator => (3, FIND_COORDINATOR),
        K::JoinGroup => (6, JOIN_GROUP),
        K::Heartbeat => (4, HEARTBEAT),
        K::LeaveGroup => (4, LEAVE_GROUP),
        K::SyncGroup => (4, SYNC_GROUP),
        K::DescribeGroups => (5, DESCRIBE_GROUPS),
        K::ListGroups => (3, LIST_GROUPS),
        K::SaslHandshake => (NEVER, SASL_HANDSHAKE),
        K::ApiVersions => (3, API_VERSIONS),
        K::CreateTopics => (5, CREATE_TOPICS),
        K::DeleteTopics => (4, DELETE_TOPICS),
        K::DeleteRecords => (2, DELETE_RECORDS),
        K::InitProducerId => (2, INIT_PRODUCER_ID),
        K::DescribeConfigs => (4, DESCRIBE_CONFIGS),
        K::AlterConfigs => (2, ALTER_CONFIGS),
        K::SaslAuthenticate => (2, SASL_AUTHENTICATE),
        K::CreatePartitions => (2, CREATE_PARTITIONS),
        K::DeleteGroups => (2, DELETE_GROUPS),
        K::IncrementalAlterConfigs => (1, INCREMENTAL_ALTER_CONFIGS),
        K::OffsetDelete => (NEVER, OFFSET_DELETE),
        K::DescribeCluster => (0, DESCRIBE_CLUSTER),
        K::ConsumerGroupHeartbeat => (0, CONSUMER_GROUP_HEARTBEAT),
        K::ConsumerGroupDescribe => (0, CONSUMER_GROUP_DESCRIBE),
        _ => return None,
    };
    Some(Schema {
        flexible_from,
        body,
    })
}
