//! Request-body guard: walks a Kafka request body against its schema before `kafka-protocol`
//! decodes it, so that a hostile count cannot abort the process.
//!
//! Why it exists: kafka-protocol 0.18 decodes every array with `Vec::with_capacity(n)`, `n` read
//! straight from the wire (`Array` and `CompactArray` in its `protocol/types.rs`). A 14-byte
//! AlterConfigs v0 frame claiming 0x26002600 elements makes that allocation fail, and a failed
//! allocation aborts the process: it is not a panic, so `catch_unwind` cannot contain it. Strings
//! and bytes are length-checked by the crate; array counts, at every depth, are not. We keep
//! kafka-protocol and do not patch it, so the gateway runs this guard first and decodes only the
//! (api key, version) pairs listed by [`guarded_versions`], only when [`check_request_body`]
//! accepts the body.
//!
//! How it works: one static table per request lists each struct's fields with the versions they
//! exist in, whether the decoder accepts null (the field's Rust type is an `Option`) and the known
//! tagged fields, transcribed from the crate's generated `impl Decodable` code (not from the Kafka
//! JSON schemas: where the two differ, the decoder is what must be mirrored). A walker follows it
//! over the bytes without allocating and refuses a body in which a count or length is negative
//! where null is not accepted, is larger than the bytes that remain, or in which the body ends
//! early. Once it accepts a body, every `with_capacity` the decoder calls is bounded by the bytes
//! actually present.
//!
//! What it does not bound: decoding still costs up to about 40 bytes of memory per body byte (a
//! 3-byte flexible `MemberIdentity` or `OffsetFetchRequestGroup` becomes a 120-byte struct, an
//! empty compact string a 32-byte `StrBytes`), so the frame-size limit is what caps memory.
//!
//! How it is verified (tests below, and `fuzz/fuzz_targets/request_frame.rs`): for every guarded
//! version, the default value and values with one element in every array at every depth (strings
//! set, nullable fields set or null, unknown tagged fields added) are encoded with kafka-protocol
//! and the walker must consume exactly the encoded bytes, as the decoder does, and visit every
//! array the version has; every count is overwritten with huge values and every truncation is
//! tried; mutated and random bodies are compared with the real decoder.

/// Why a request body was refused. Every variant means "invalid request": close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The (api key, version) pair is not in [`guarded_versions`]; do not decode it.
    #[error("api key {key} version {version} is not guarded")]
    UnknownApi { key: i16, version: i16 },
    /// The body ends inside a field.
    #[error("request body truncated at byte {at}")]
    Truncated { at: usize },
    /// A length or count below -1, or -1 (compact: 0) where the decoder refuses null.
    #[error("invalid length {len} at byte {at}")]
    BadLength { at: usize, len: i64 },
    /// An array count whose elements cannot fit in the bytes that remain.
    #[error("array count {count} at byte {at} exceeds the {remaining} bytes remaining")]
    CountTooLarge {
        at: usize,
        count: u64,
        remaining: usize,
    },
    /// A string, bytes or tagged-field length larger than the bytes that remain.
    #[error("length {len} at byte {at} exceeds the {remaining} bytes remaining")]
    LengthTooLarge {
        at: usize,
        len: u64,
        remaining: usize,
    },
    /// A known tagged field sent in a version that does not have it (the decoder refuses it).
    #[error("tagged field {tag} at byte {at} is not valid in version {version}")]
    TagNotInVersion { at: usize, tag: u32, version: i16 },
    /// A known tagged field whose value does not fill exactly its declared size (the decoder
    /// ignores the size and reads the value, so a mismatch would desynchronise it from us).
    #[error("tagged field {tag} at byte {at} declares {declared} bytes but its value uses {used}")]
    TaggedSizeMismatch {
        at: usize,
        tag: u32,
        declared: usize,
        used: usize,
    },
}

/// Checks a request body (the bytes after the request header) for `api_key`/`api_version`: every
/// array count, string and bytes length must be non-negative (or -1 where the decoder accepts
/// null) and fit in the bytes that remain, and the body must not end early. Bytes after the last
/// field are allowed, as kafka-protocol ignores them.
pub fn check_request_body(api_key: i16, api_version: i16, body: &[u8]) -> Result<(), GuardError> {
    request_body_len(api_key, api_version, body).map(|_| ())
}

/// Like [`check_request_body`], returning how many bytes of `body` the decoder will read.
pub fn request_body_len(api_key: i16, api_version: i16, body: &[u8]) -> Result<usize, GuardError> {
    let (mut walker, fields) = Walker::for_request(api_key, api_version, body)?;
    walker.walk_struct(fields)?;
    Ok(walker.pos)
}

/// The (api key, min version, max version) triples the guard knows. Decode nothing else.
pub fn guarded_versions() -> &'static [(i16, i16, i16)] {
    &GUARDED
}

static GUARDED: [(i16, i16, i16); APIS.len()] = {
    let mut out = [(0, 0, 0); APIS.len()];
    let mut i = 0;
    while i < APIS.len() {
        out[i] = (APIS[i].key, APIS[i].min, APIS[i].max);
        i += 1;
    }
    out
};

// ---------------------------------------------------------------------------------------------
// The schema language.

/// A field's wire type, as kafka-protocol decodes it.
#[derive(Debug, Clone, Copy)]
enum Ty {
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
enum Elem {
    Fixed(usize),
    /// A string that may not be null.
    Str,
    Struct(&'static [Field]),
}

/// One field of a struct: its type, the versions it is on the wire, and its tag if tagged.
#[derive(Debug, Clone, Copy)]
struct Field {
    ty: Ty,
    min: i16,
    max: i16,
    tag: Option<u32>,
}

impl Field {
    fn in_version(&self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }
}

/// One request: its versions, the first flexible version (compact lengths and tagged-field
/// sections in every struct), and the fields of its top-level struct.
struct Api {
    key: i16,
    min: i16,
    max: i16,
    flexible_from: i16,
    body: &'static [Field],
}

const NEVER: i16 = i16::MAX;

const I8: Ty = Ty::Fixed(1);
const BOOL: Ty = Ty::Fixed(1);
const I16: Ty = Ty::Fixed(2);
const I32: Ty = Ty::Fixed(4);
const I64: Ty = Ty::Fixed(8);
const UUID: Ty = Ty::Fixed(16);
const STR: Ty = Ty::Str { nullable: false };
const NSTR: Ty = Ty::Str { nullable: true };
const BYTES: Ty = Ty::Bytes { nullable: false };
const RECORDS: Ty = Ty::Bytes { nullable: true };
const I32S: Ty = Ty::Array {
    nullable: false,
    elem: Elem::Fixed(4),
};
const STRS: Ty = Ty::Array {
    nullable: false,
    elem: Elem::Str,
};
const NSTRS: Ty = Ty::Array {
    nullable: true,
    elem: Elem::Str,
};

/// A non-nullable array of structs.
const fn structs(fields: &'static [Field]) -> Ty {
    Ty::Array {
        nullable: false,
        elem: Elem::Struct(fields),
    }
}

/// A nullable array of structs.
const fn nstructs(fields: &'static [Field]) -> Ty {
    Ty::Array {
        nullable: true,
        elem: Elem::Struct(fields),
    }
}

/// In every version.
const fn all(ty: Ty) -> Field {
    between(0, NEVER, ty)
}

/// In versions `min` and later.
const fn since(min: i16, ty: Ty) -> Field {
    between(min, NEVER, ty)
}

/// In versions up to `max`.
const fn until(max: i16, ty: Ty) -> Field {
    between(0, max, ty)
}

const fn between(min: i16, max: i16, ty: Ty) -> Field {
    Field {
        ty,
        min,
        max,
        tag: None,
    }
}

/// A known tagged field, valid from version `min`.
const fn tagged(tag: u32, min: i16, ty: Ty) -> Field {
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

const GET_TELEMETRY_SUBSCRIPTIONS: &[Field] = &[all(UUID)];

const fn api(key: i16, min: i16, max: i16, flexible_from: i16, body: &'static [Field]) -> Api {
    Api {
        key,
        min,
        max,
        flexible_from,
        body,
    }
}

/// The guarded requests: (key, versions, first flexible version, fields).
const APIS: &[Api] = &[
    api(0, 3, 11, 9, PRODUCE),
    api(1, 4, 16, 12, FETCH),
    api(2, 1, 9, 6, LIST_OFFSETS),
    api(3, 0, 12, 9, METADATA),
    api(8, 2, 9, 8, OFFSET_COMMIT),
    api(9, 1, 9, 6, OFFSET_FETCH),
    api(10, 0, 6, 3, FIND_COORDINATOR),
    api(11, 0, 9, 6, JOIN_GROUP),
    api(12, 0, 4, 4, HEARTBEAT),
    api(13, 0, 5, 4, LEAVE_GROUP),
    api(14, 0, 5, 4, SYNC_GROUP),
    api(15, 0, 5, 5, DESCRIBE_GROUPS),
    api(16, 0, 5, 3, LIST_GROUPS),
    api(17, 0, 1, NEVER, SASL_HANDSHAKE),
    api(18, 0, 4, 3, API_VERSIONS),
    api(19, 2, 7, 5, CREATE_TOPICS),
    api(20, 1, 6, 4, DELETE_TOPICS),
    api(21, 0, 2, 2, DELETE_RECORDS),
    api(22, 0, 5, 2, INIT_PRODUCER_ID),
    api(32, 1, 4, 4, DESCRIBE_CONFIGS),
    api(33, 0, 2, 2, ALTER_CONFIGS),
    api(36, 0, 2, 2, SASL_AUTHENTICATE),
    api(37, 0, 3, 2, CREATE_PARTITIONS),
    api(42, 0, 2, 2, DELETE_GROUPS),
    api(44, 0, 1, 1, INCREMENTAL_ALTER_CONFIGS),
    api(47, 0, 0, NEVER, OFFSET_DELETE),
    api(60, 0, 1, 0, DESCRIBE_CLUSTER),
    api(68, 0, 1, 0, CONSUMER_GROUP_HEARTBEAT),
    api(69, 0, 1, 0, CONSUMER_GROUP_DESCRIBE),
    api(71, 0, 0, 0, GET_TELEMETRY_SUBSCRIPTIONS),
];

// ---------------------------------------------------------------------------------------------
// The walker. It reads exactly what kafka-protocol's decoder reads, in the same order, and
// allocates nothing (except, in tests, the list of count positions).

/// Where an array count was read (tests overwrite it with hostile values).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
struct CountSite {
    at: usize,
    len: usize,
    compact: bool,
    nullable: bool,
    count: u64,
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where the current region ends: the body, or a known tagged field's declared size.
    end: usize,
    version: i16,
    flexible: bool,
    #[cfg(test)]
    sites: Vec<CountSite>,
}

impl<'a> Walker<'a> {
    fn for_request(
        key: i16,
        version: i16,
        buf: &'a [u8],
    ) -> Result<(Self, &'static [Field]), GuardError> {
        let api = APIS
            .iter()
            .find(|api| api.key == key && api.min <= version && version <= api.max)
            .ok_or(GuardError::UnknownApi { key, version })?;
        let walker = Walker {
            buf,
            pos: 0,
            end: buf.len(),
            version,
            flexible: version >= api.flexible_from,
            #[cfg(test)]
            sites: Vec::new(),
        };
        Ok((walker, api.body))
    }

    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GuardError> {
        let truncated = GuardError::Truncated { at: self.pos };
        if n > self.remaining() {
            return Err(truncated);
        }
        let bytes = self.buf.get(self.pos..self.pos + n).ok_or(truncated)?;
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, GuardError> {
        let at = self.pos;
        self.take(1)?
            .first()
            .copied()
            .ok_or(GuardError::Truncated { at })
    }

    fn i16(&mut self) -> Result<i16, GuardError> {
        let at = self.pos;
        let bytes = self.take(2)?;
        let bytes: [u8; 2] = bytes.try_into().map_err(|_| GuardError::Truncated { at })?;
        Ok(i16::from_be_bytes(bytes))
    }

    fn i32(&mut self) -> Result<i32, GuardError> {
        let at = self.pos;
        let bytes = self.take(4)?;
        let bytes: [u8; 4] = bytes.try_into().map_err(|_| GuardError::Truncated { at })?;
        Ok(i32::from_be_bytes(bytes))
    }

    /// An unsigned varint exactly as kafka-protocol reads it: at most five bytes, the fifth
    /// taken whole even if its continuation bit is set, bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u32, GuardError> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// Reads a length or count prefix: `None` for null. `classic_i32` picks int32 over int16
    /// in non-flexible versions.
    fn prefix(&mut self, classic_i32: bool, nullable: bool) -> Result<Option<u64>, GuardError> {
        let at = self.pos;
        let len = if self.flexible {
            i64::from(self.uvarint()?) - 1
        } else if classic_i32 {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match len {
            -1 if nullable => Ok(None),
            len if len < 0 => Err(GuardError::BadLength { at, len }),
            len => Ok(Some(len.unsigned_abs())),
        }
    }

    fn walk(&mut self, ty: Ty) -> Result<(), GuardError> {
        match ty {
            Ty::Fixed(n) => self.take(n).map(|_| ()),
            Ty::Str { nullable } => self.walk_blob(false, nullable),
            Ty::Bytes { nullable } => self.walk_blob(true, nullable),
            Ty::Array { nullable, elem } => self.walk_array(nullable, elem),
            Ty::Struct(fields) => self.walk_struct(fields),
        }
    }

    fn walk_blob(&mut self, classic_i32: bool, nullable: bool) -> Result<(), GuardError> {
        let at = self.pos;
        if let Some(len) = self.prefix(classic_i32, nullable)? {
            let remaining = self.remaining();
            match usize::try_from(len) {
                Ok(n) if n <= remaining => {
                    self.take(n)?;
                }
                _ => return Err(GuardError::LengthTooLarge { at, len, remaining }),
            }
        }
        Ok(())
    }

    fn walk_array(&mut self, nullable: bool, elem: Elem) -> Result<(), GuardError> {
        let at = self.pos;
        let Some(count) = self.prefix(true, nullable)? else {
            return Ok(());
        };
        let remaining = self.remaining();
        // Every element takes at least one byte on the wire (a fixed-width one, its width): the
        // count the decoder will pass to `Vec::with_capacity` is bounded by the bytes left.
        let min_size = match elem {
            Elem::Fixed(n) => n.max(1),
            Elem::Str | Elem::Struct(_) => 1,
        };
        if count.saturating_mul(min_size as u64) > remaining as u64 {
            return Err(GuardError::CountTooLarge {
                at,
                count,
                remaining,
            });
        }
        #[cfg(test)]
        self.sites.push(CountSite {
            at,
            len: self.pos - at,
            compact: self.flexible,
            nullable,
            count,
        });
        for _ in 0..count {
            match elem {
                Elem::Fixed(n) => {
                    self.take(n)?;
                }
                Elem::Str => self.walk_blob(false, false)?,
                Elem::Struct(fields) => self.walk_struct(fields)?,
            }
        }
        Ok(())
    }

    fn walk_struct(&mut self, fields: &'static [Field]) -> Result<(), GuardError> {
        for field in fields {
            if field.tag.is_none() && field.in_version(self.version) {
                self.walk(field.ty)?;
            }
        }
        if self.flexible {
            self.walk_tagged_fields(fields)?;
        }
        Ok(())
    }

    /// The tagged-field section: count, then (tag, size, value) each. kafka-protocol keeps
    /// unknown values as bytes, and decodes known ones in place without looking at their size.
    fn walk_tagged_fields(&mut self, fields: &'static [Field]) -> Result<(), GuardError> {
        let at = self.pos;
        let count = u64::from(self.uvarint()?);
        let remaining = self.remaining();
        // Each entry is at least a tag byte and a size byte.
        if count.saturating_mul(2) > remaining as u64 {
            return Err(GuardError::CountTooLarge {
                at,
                count,
                remaining,
            });
        }
        for _ in 0..count {
            let tag_at = self.pos;
            let tag = self.uvarint()?;
            let size_at = self.pos;
            let size = self.uvarint()?;
            let remaining = self.remaining();
            let declared = match usize::try_from(size) {
                Ok(n) if n <= remaining => n,
                _ => {
                    return Err(GuardError::LengthTooLarge {
                        at: size_at,
                        len: u64::from(size),
                        remaining,
                    })
                }
            };
            match fields.iter().find(|field| field.tag == Some(tag)) {
                None => {
                    self.take(declared)?;
                }
                Some(field) if field.in_version(self.version) => {
                    let outer_end = self.end;
                    let start = self.pos;
                    self.end = start + declared;
                    self.walk(field.ty)?;
                    let used = self.pos - start;
                    if used != declared {
                        return Err(GuardError::TaggedSizeMismatch {
                            at: tag_at,
                            tag,
                            declared,
                            used,
                        });
                    }
                    self.end = outer_end;
                }
                Some(_) => {
                    return Err(GuardError::TagNotInVersion {
                        at: tag_at,
                        tag,
                        version: self.version,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{
        alter_configs_request, api_versions_request::ApiVersionsRequest,
        consumer_group_describe_request::ConsumerGroupDescribeRequest,
        consumer_group_heartbeat_request, create_partitions_request, create_topics_request,
        delete_groups_request::DeleteGroupsRequest, delete_records_request, delete_topics_request,
        describe_cluster_request::DescribeClusterRequest, describe_configs_request,
        describe_groups_request::DescribeGroupsRequest, fetch_request,
        find_coordinator_request::FindCoordinatorRequest,
        get_telemetry_subscriptions_request::GetTelemetrySubscriptionsRequest,
        heartbeat_request::HeartbeatRequest, incremental_alter_configs_request,
        init_producer_id_request::InitProducerIdRequest, join_group_request, leave_group_request,
        list_groups_request::ListGroupsRequest, list_offsets_request, metadata_request,
        offset_commit_request, offset_delete_request, offset_fetch_request, produce_request,
        sasl_authenticate_request::SaslAuthenticateRequest,
        sasl_handshake_request::SaslHandshakeRequest, sync_group_request, ApiKey, BrokerId,
        GroupId, ProducerId, RequestHeader, RequestKind, TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::{
        decode_request_header_from_buffer, Encodable, Message, StrBytes,
    };
    use std::collections::{BTreeMap, BTreeSet};

    // -- Building sample requests -------------------------------------------------------------

    fn s(value: &'static str) -> StrBytes {
        StrBytes::from_static_str(value)
    }

    fn topic() -> TopicName {
        TopicName(s("topic-a"))
    }

    fn group() -> GroupId {
        GroupId(s("group-a"))
    }

    /// `Some(value)`, or `None` in the samples whose nullable fields are all null.
    fn opt<T>(nulls: bool, value: T) -> Option<T> {
        (!nulls).then_some(value)
    }

    /// Unknown tagged fields, one with a multi-byte tag: written only in flexible versions.
    fn tags() -> BTreeMap<i32, Bytes> {
        BTreeMap::from([
            (300, Bytes::from_static(b"x")),
            (100_000, Bytes::from_static(b"tagged")),
        ])
    }

    fn encodes<T: Encodable>(value: &T, version: i16) -> bool {
        value.encode(&mut BytesMut::new(), version).is_ok()
    }

    fn encode<T: Encodable>(value: &T, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        if let Err(e) = value.encode(&mut buf, version) {
            panic!("encoding at version {version}: {e}");
        }
        buf.to_vec()
    }

    /// Builds a `$ty` assignment by assignment, keeping each only if the value still encodes at
    /// version `$v` (kafka-protocol refuses set fields a version does not have), so one builder
    /// serves every version and sets every field that version has.
    macro_rules! fill {
        ($v:expr, $ty:path { $($field:ident: $value:expr),* $(,)? }) => {{
            let mut built = <$ty>::default();
            $(
                let mut next = built.clone();
                next.$field = $value;
                if encodes(&next, $v) {
                    built = next;
                }
            )*
            built
        }};
    }

    fn api_versions(v: i16, _nulls: bool) -> ApiVersionsRequest {
        fill!(
            v,
            ApiVersionsRequest {
                client_software_name: s("weir-test"),
                client_software_version: s("1.0"),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn metadata(v: i16, nulls: bool) -> metadata_request::MetadataRequest {
        use metadata_request::*;
        let topic = fill!(
            v,
            MetadataRequestTopic {
                name: opt(nulls, topic()),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            MetadataRequest {
                topics: opt(nulls, vec![topic]),
                allow_auto_topic_creation: false,
                include_cluster_authorized_operations: true,
                include_topic_authorized_operations: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn produce(v: i16, nulls: bool) -> produce_request::ProduceRequest {
        use produce_request::*;
        let partition = fill!(
            v,
            PartitionProduceData {
                index: 3,
                records: opt(nulls, Bytes::from_static(b"opaque record batch")),
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            TopicProduceData {
                name: topic(),
                partition_data: vec![partition],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            ProduceRequest {
                transactional_id: opt(nulls, TransactionalId(s("txn"))),
                acks: -1,
                timeout_ms: 1000,
                topic_data: vec![topic],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn fetch(v: i16, nulls: bool) -> fetch_request::FetchRequest {
        use fetch_request::*;
        let partition = fill!(
            v,
            FetchPartition {
                partition: 1,
                current_leader_epoch: 2,
                fetch_offset: 3,
                last_fetched_epoch: 4,
                log_start_offset: 5,
                partition_max_bytes: 6,
                unknown_tagged_fields: tags(),
            }
        );
        let fetch_topic = fill!(
            v,
            FetchTopic {
                topic: topic(),
                partitions: vec![partition],
                unknown_tagged_fields: tags(),
            }
        );
        let forgotten = fill!(
            v,
            ForgottenTopic {
                topic: topic(),
                partitions: vec![7],
                unknown_tagged_fields: tags(),
            }
        );
        let replica_state = fill!(
            v,
            ReplicaState {
                replica_id: BrokerId(8),
                replica_epoch: 9,
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            FetchRequest {
                cluster_id: opt(nulls, s("cluster")),
                replica_id: BrokerId(10),
                replica_state: replica_state,
                max_wait_ms: 11,
                min_bytes: 12,
                max_bytes: 13,
                isolation_level: 1,
                session_id: 14,
                session_epoch: 15,
                topics: vec![fetch_topic],
                forgotten_topics_data: vec![forgotten],
                rack_id: s("rack"),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn list_offsets(v: i16, _nulls: bool) -> list_offsets_request::ListOffsetsRequest {
        use list_offsets_request::*;
        let partition = fill!(
            v,
            ListOffsetsPartition {
                partition_index: 1,
                current_leader_epoch: 2,
                timestamp: 3,
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            ListOffsetsTopic {
                name: topic(),
                partitions: vec![partition],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            ListOffsetsRequest {
                replica_id: BrokerId(4),
                isolation_level: 1,
                topics: vec![topic],
                timeout_ms: 5,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn init_producer_id(v: i16, nulls: bool) -> InitProducerIdRequest {
        fill!(
            v,
            InitProducerIdRequest {
                transactional_id: opt(nulls, TransactionalId(s("txn"))),
                transaction_timeout_ms: 1,
                producer_id: ProducerId(2),
                producer_epoch: 3,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn create_topics(v: i16, nulls: bool) -> create_topics_request::CreateTopicsRequest {
        use create_topics_request::*;
        let assignment = fill!(
            v,
            CreatableReplicaAssignment {
                partition_index: 1,
                broker_ids: vec![BrokerId(2)],
                unknown_tagged_fields: tags(),
            }
        );
        let config = fill!(
            v,
            CreatableTopicConfig {
                name: s("retention.ms"),
                value: opt(nulls, s("1000")),
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            CreatableTopic {
                name: topic(),
                num_partitions: 3,
                replication_factor: 4,
                assignments: vec![assignment],
                configs: vec![config],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            CreateTopicsRequest {
                topics: vec![topic],
                timeout_ms: 5,
                validate_only: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn delete_topics(v: i16, nulls: bool) -> delete_topics_request::DeleteTopicsRequest {
        use delete_topics_request::*;
        let state = fill!(
            v,
            DeleteTopicState {
                name: opt(nulls, topic()),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            DeleteTopicsRequest {
                topics: vec![state],
                topic_names: vec![topic()],
                timeout_ms: 1,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn create_partitions(
        v: i16,
        nulls: bool,
    ) -> create_partitions_request::CreatePartitionsRequest {
        use create_partitions_request::*;
        let assignment = fill!(
            v,
            CreatePartitionsAssignment {
                broker_ids: vec![BrokerId(1)],
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            CreatePartitionsTopic {
                name: topic(),
                count: 2,
                assignments: opt(nulls, vec![assignment]),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            CreatePartitionsRequest {
                topics: vec![topic],
                timeout_ms: 3,
                validate_only: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn describe_configs(v: i16, nulls: bool) -> describe_configs_request::DescribeConfigsRequest {
        use describe_configs_request::*;
        let resource = fill!(
            v,
            DescribeConfigsResource {
                resource_type: 2,
                resource_name: s("topic-a"),
                configuration_keys: opt(nulls, vec![s("retention.ms")]),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            DescribeConfigsRequest {
                resources: vec![resource],
                include_synonyms: true,
                include_documentation: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn alter_configs(v: i16, nulls: bool) -> alter_configs_request::AlterConfigsRequest {
        use alter_configs_request::*;
        let config = fill!(
            v,
            AlterableConfig {
                name: s("retention.ms"),
                value: opt(nulls, s("1000")),
                unknown_tagged_fields: tags(),
            }
        );
        let resource = fill!(
            v,
            AlterConfigsResource {
                resource_type: 2,
                resource_name: s("topic-a"),
                configs: vec![config],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            AlterConfigsRequest {
                resources: vec![resource],
                validate_only: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn incremental_alter_configs(
        v: i16,
        nulls: bool,
    ) -> incremental_alter_configs_request::IncrementalAlterConfigsRequest {
        use incremental_alter_configs_request::*;
        let config = fill!(
            v,
            AlterableConfig {
                name: s("retention.ms"),
                config_operation: 1,
                value: opt(nulls, s("1000")),
                unknown_tagged_fields: tags(),
            }
        );
        let resource = fill!(
            v,
            AlterConfigsResource {
                resource_type: 2,
                resource_name: s("topic-a"),
                configs: vec![config],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            IncrementalAlterConfigsRequest {
                resources: vec![resource],
                validate_only: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn describe_cluster(v: i16, _nulls: bool) -> DescribeClusterRequest {
        fill!(
            v,
            DescribeClusterRequest {
                include_cluster_authorized_operations: true,
                endpoint_type: 2,
                include_fenced_brokers: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn delete_records(v: i16, _nulls: bool) -> delete_records_request::DeleteRecordsRequest {
        use delete_records_request::*;
        let partition = fill!(
            v,
            DeleteRecordsPartition {
                partition_index: 1,
                offset: 2,
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            DeleteRecordsTopic {
                name: topic(),
                partitions: vec![partition],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            DeleteRecordsRequest {
                topics: vec![topic],
                timeout_ms: 3,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn find_coordinator(v: i16, _nulls: bool) -> FindCoordinatorRequest {
        fill!(
            v,
            FindCoordinatorRequest {
                key: s("group-a"),
                key_type: 1,
                coordinator_keys: vec![s("group-a")],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn join_group(v: i16, nulls: bool) -> join_group_request::JoinGroupRequest {
        use join_group_request::*;
        let protocol = fill!(
            v,
            JoinGroupRequestProtocol {
                name: s("range"),
                metadata: Bytes::from_static(b"subscription"),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            JoinGroupRequest {
                group_id: group(),
                session_timeout_ms: 1,
                rebalance_timeout_ms: 2,
                member_id: s("member"),
                group_instance_id: opt(nulls, s("instance")),
                protocol_type: s("consumer"),
                protocols: vec![protocol],
                reason: opt(nulls, s("reason")),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn sync_group(v: i16, nulls: bool) -> sync_group_request::SyncGroupRequest {
        use sync_group_request::*;
        let assignment = fill!(
            v,
            SyncGroupRequestAssignment {
                member_id: s("member"),
                assignment: Bytes::from_static(b"assignment"),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            SyncGroupRequest {
                group_id: group(),
                generation_id: 1,
                member_id: s("member"),
                group_instance_id: opt(nulls, s("instance")),
                protocol_type: opt(nulls, s("consumer")),
                protocol_name: opt(nulls, s("range")),
                assignments: vec![assignment],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn heartbeat(v: i16, nulls: bool) -> HeartbeatRequest {
        fill!(
            v,
            HeartbeatRequest {
                group_id: group(),
                generation_id: 1,
                member_id: s("member"),
                group_instance_id: opt(nulls, s("instance")),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn leave_group(v: i16, nulls: bool) -> leave_group_request::LeaveGroupRequest {
        use leave_group_request::*;
        let member = fill!(
            v,
            MemberIdentity {
                member_id: s("member"),
                group_instance_id: opt(nulls, s("instance")),
                reason: opt(nulls, s("reason")),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            LeaveGroupRequest {
                group_id: group(),
                member_id: s("member"),
                members: vec![member],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn offset_commit(v: i16, nulls: bool) -> offset_commit_request::OffsetCommitRequest {
        use offset_commit_request::*;
        let partition = fill!(
            v,
            OffsetCommitRequestPartition {
                partition_index: 1,
                committed_offset: 2,
                committed_leader_epoch: 3,
                committed_metadata: opt(nulls, s("metadata")),
                unknown_tagged_fields: tags(),
            }
        );
        let topic = fill!(
            v,
            OffsetCommitRequestTopic {
                name: topic(),
                partitions: vec![partition],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            OffsetCommitRequest {
                group_id: group(),
                generation_id_or_member_epoch: 4,
                member_id: s("member"),
                group_instance_id: opt(nulls, s("instance")),
                retention_time_ms: 5,
                topics: vec![topic],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn offset_fetch(v: i16, nulls: bool) -> offset_fetch_request::OffsetFetchRequest {
        use offset_fetch_request::*;
        let legacy_topic = fill!(
            v,
            OffsetFetchRequestTopic {
                name: topic(),
                partition_indexes: vec![1],
                unknown_tagged_fields: tags(),
            }
        );
        let group_topic = fill!(
            v,
            OffsetFetchRequestTopics {
                name: topic(),
                partition_indexes: vec![2],
                unknown_tagged_fields: tags(),
            }
        );
        let group_entry = fill!(
            v,
            OffsetFetchRequestGroup {
                group_id: group(),
                member_id: opt(nulls, s("member")),
                member_epoch: 3,
                topics: opt(nulls, vec![group_topic]),
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            OffsetFetchRequest {
                group_id: group(),
                topics: opt(nulls, vec![legacy_topic]),
                groups: vec![group_entry],
                require_stable: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn describe_groups(v: i16, _nulls: bool) -> DescribeGroupsRequest {
        fill!(
            v,
            DescribeGroupsRequest {
                groups: vec![group()],
                include_authorized_operations: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn list_groups(v: i16, _nulls: bool) -> ListGroupsRequest {
        fill!(
            v,
            ListGroupsRequest {
                states_filter: vec![s("Stable")],
                types_filter: vec![s("classic")],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn delete_groups(v: i16, _nulls: bool) -> DeleteGroupsRequest {
        fill!(
            v,
            DeleteGroupsRequest {
                groups_names: vec![group()],
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn offset_delete(v: i16, _nulls: bool) -> offset_delete_request::OffsetDeleteRequest {
        use offset_delete_request::*;
        let partition = fill!(v, OffsetDeleteRequestPartition { partition_index: 1 });
        let topic = fill!(
            v,
            OffsetDeleteRequestTopic {
                name: topic(),
                partitions: vec![partition],
            }
        );
        fill!(
            v,
            OffsetDeleteRequest {
                group_id: group(),
                topics: vec![topic],
            }
        )
    }

    fn consumer_group_heartbeat(
        v: i16,
        nulls: bool,
    ) -> consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest {
        use consumer_group_heartbeat_request::*;
        let partitions = fill!(
            v,
            TopicPartitions {
                partitions: vec![1],
                unknown_tagged_fields: tags(),
            }
        );
        fill!(
            v,
            ConsumerGroupHeartbeatRequest {
                group_id: group(),
                member_id: s("member"),
                member_epoch: 2,
                instance_id: opt(nulls, s("instance")),
                rack_id: opt(nulls, s("rack")),
                rebalance_timeout_ms: 3,
                subscribed_topic_names: opt(nulls, vec![topic()]),
                subscribed_topic_regex: opt(nulls, s("topic-.*")),
                server_assignor: opt(nulls, s("uniform")),
                topic_partitions: opt(nulls, vec![partitions]),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn consumer_group_describe(v: i16, _nulls: bool) -> ConsumerGroupDescribeRequest {
        fill!(
            v,
            ConsumerGroupDescribeRequest {
                group_ids: vec![group()],
                include_authorized_operations: true,
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn sasl_handshake(v: i16, _nulls: bool) -> SaslHandshakeRequest {
        fill!(
            v,
            SaslHandshakeRequest {
                mechanism: s("PLAIN")
            }
        )
    }

    fn sasl_authenticate(v: i16, _nulls: bool) -> SaslAuthenticateRequest {
        fill!(
            v,
            SaslAuthenticateRequest {
                auth_bytes: Bytes::from_static(b"\0user\0password"),
                unknown_tagged_fields: tags(),
            }
        )
    }

    fn get_telemetry_subscriptions(v: i16, _nulls: bool) -> GetTelemetrySubscriptionsRequest {
        fill!(
            v,
            GetTelemetrySubscriptionsRequest {
                unknown_tagged_fields: tags(),
            }
        )
    }

    /// The encodings of one guarded request at one version: the default value, a value with
    /// one element in every array and every nullable field set, and the same with every
    /// nullable field null.
    fn samples(key: i16, v: i16) -> [Vec<u8>; 3] {
        fn three<T: Encodable + Message + Default>(
            v: i16,
            build: fn(i16, bool) -> T,
        ) -> [Vec<u8>; 3] {
            assert!(
                T::VERSIONS.min <= v && v <= T::VERSIONS.max,
                "kafka-protocol does not support version {v}"
            );
            [
                encode(&T::default(), v),
                encode(&build(v, false), v),
                encode(&build(v, true), v),
            ]
        }
        match key {
            0 => three(v, produce),
            1 => three(v, fetch),
            2 => three(v, list_offsets),
            3 => three(v, metadata),
            8 => three(v, offset_commit),
            9 => three(v, offset_fetch),
            10 => three(v, find_coordinator),
            11 => three(v, join_group),
            12 => three(v, heartbeat),
            13 => three(v, leave_group),
            14 => three(v, sync_group),
            15 => three(v, describe_groups),
            16 => three(v, list_groups),
            17 => three(v, sasl_handshake),
            18 => three(v, api_versions),
            19 => three(v, create_topics),
            20 => three(v, delete_topics),
            21 => three(v, delete_records),
            22 => three(v, init_producer_id),
            32 => three(v, describe_configs),
            33 => three(v, alter_configs),
            36 => three(v, sasl_authenticate),
            37 => three(v, create_partitions),
            42 => three(v, delete_groups),
            44 => three(v, incremental_alter_configs),
            47 => three(v, offset_delete),
            60 => three(v, describe_cluster),
            68 => three(v, consumer_group_heartbeat),
            69 => three(v, consumer_group_describe),
            71 => three(v, get_telemetry_subscriptions),
            _ => panic!("no samples for api key {key}"),
        }
    }

    fn each_guarded_version() -> impl Iterator<Item = (i16, i16)> {
        guarded_versions()
            .iter()
            .flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v)))
    }

    // -- Helpers around the walker and the real decoder ---------------------------------------

    fn trace(key: i16, v: i16, body: &[u8]) -> (Result<usize, GuardError>, Vec<CountSite>) {
        let Ok((mut walker, fields)) = Walker::for_request(key, v, body) else {
            panic!("api key {key} version {v} is not guarded");
        };
        let result = walker.walk_struct(fields).map(|()| walker.pos);
        (result, walker.sites)
    }

    /// How many bytes kafka-protocol's decoder reads from `body`, or its error. Only call it on
    /// bodies the guard accepted (anything else may abort the test process).
    fn decoded_len(key: i16, v: i16, body: &[u8]) -> Result<usize, String> {
        let api_key = ApiKey::try_from(key).map_err(|()| format!("unknown api key {key}"))?;
        let mut bytes = Bytes::copy_from_slice(body);
        RequestKind::decode(api_key, &mut bytes, v).map_err(|e| e.root_cause().to_string())?;
        Ok(body.len() - bytes.len())
    }

    /// The number of arrays a value with one element in every array meets at `version`.
    fn arrays_in(fields: &[Field], version: i16, flexible: bool) -> usize {
        fields
            .iter()
            .filter(|f| f.in_version(version) && (f.tag.is_none() || flexible))
            .map(|f| match f.ty {
                Ty::Array {
                    elem: Elem::Struct(inner),
                    ..
                } => 1 + arrays_in(inner, version, flexible),
                Ty::Array { .. } => 1,
                Ty::Struct(inner) => arrays_in(inner, version, flexible),
                Ty::Fixed(_) | Ty::Str { .. } | Ty::Bytes { .. } => 0,
            })
            .sum()
    }

    fn api_of(key: i16) -> &'static Api {
        let Some(api) = APIS.iter().find(|api| api.key == key) else {
            panic!("api key {key} is not guarded");
        };
        api
    }

    fn uvarint(mut value: u32) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    // -- 1. Round trips -----------------------------------------------------------------------

    #[test]
    fn guarded_versions_list_each_api_once() {
        let keys: BTreeSet<i16> = guarded_versions().iter().map(|&(key, _, _)| key).collect();
        assert_eq!(keys.len(), guarded_versions().len());
        assert!(guarded_versions().iter().all(|&(_, min, max)| min <= max));
        assert_eq!(each_guarded_version().count(), 162);
    }

    #[test]
    fn walker_consumes_exactly_what_kafka_protocol_encodes() {
        let mut checked = 0;
        for (key, v) in each_guarded_version() {
            let api = api_of(key);
            let flexible = v >= api.flexible_from;
            for (i, body) in samples(key, v).iter().enumerate() {
                let what = format!("api key {key} v{v} sample {i}");
                let (result, sites) = trace(key, v, body);
                assert_eq!(result, Ok(body.len()), "{what}");
                assert_eq!(request_body_len(key, v, body), Ok(body.len()), "{what}");
                assert_eq!(decoded_len(key, v, body), Ok(body.len()), "{what}");
                if i == 1 {
                    // The populated sample meets every array the version has, once each.
                    assert_eq!(sites.len(), arrays_in(api.body, v, flexible), "{what}");
                    assert!(
                        sites.iter().all(|site| site.count == 1),
                        "{what}: {sites:?}"
                    );
                    assert!(body.len() > samples(key, v)[0].len() || sites.is_empty());
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 162 * 3);
    }

    #[test]
    fn known_tagged_fields_are_walked_within_their_declared_size() {
        // Fetch v15 whose only top-level tagged field is cluster_id (tag 0): it ends the body.
        let mut request = fetch(15, false);
        request.unknown_tagged_fields.clear();
        request.replica_state = Default::default();
        let body = encode(&request, 15);
        let tail = [&[1, 0, 8, 8][..], b"cluster"].concat();
        assert!(body.ends_with(&tail), "{body:?}");
        assert_eq!(request_body_len(1, 15, &body), Ok(body.len()));
        let size_at = body.len() - tail.len() + 2;
        // Declaring more bytes than the value uses would desynchronise the decoder (it ignores
        // the size of known fields): refused.
        let mut longer = body.clone();
        longer[size_at] = 9;
        longer.push(0);
        assert!(matches!(
            check_request_body(1, 15, &longer),
            Err(GuardError::TaggedSizeMismatch {
                tag: 0,
                declared: 9,
                used: 8,
                ..
            })
        ));
        // Declaring fewer: the value does not fit in its declared size.
        let mut shorter = body.clone();
        shorter[size_at] = 7;
        assert!(check_request_body(1, 15, &shorter).is_err());
        // replica_state (tag 1) exists from v15; at v12 the decoder refuses it, and so do we.
        let mut request = fetch(12, true);
        request.unknown_tagged_fields.clear();
        let mut body = encode(&request, 12);
        assert_eq!(body.last(), Some(&0), "no top-level tagged fields");
        assert_eq!(request_body_len(1, 12, &body), Ok(body.len()));
        let last = body.len() - 1;
        body[last] = 1;
        body.extend_from_slice(&[1, 1, 0]);
        assert!(matches!(
            check_request_body(1, 12, &body),
            Err(GuardError::TagNotInVersion {
                tag: 1,
                version: 12,
                ..
            })
        ));
        assert!(decoded_len(1, 12, &body).is_err());
    }

    #[test]
    fn tagged_arrays_are_count_checked_against_their_declared_size() {
        const SCHEMA: &[Field] = &[all(I32), tagged(5, 0, I32S), tagged(6, 1, STR)];
        fn walk(body: &[u8], version: i16) -> Result<usize, GuardError> {
            let mut walker = Walker {
                buf: body,
                pos: 0,
                end: body.len(),
                version,
                flexible: true,
                sites: Vec::new(),
            };
            walker.walk_struct(SCHEMA).map(|()| walker.pos)
        }
        let fixed = [0, 0, 0, 1];
        // One tagged field, tag 5, size 5: a compact array of one int32.
        let ok = [&fixed[..], &[1, 5, 5, 2, 0, 0, 0, 9]].concat();
        assert_eq!(walk(&ok, 0), Ok(ok.len()));
        // Three elements claimed inside the 5 declared bytes, with plenty of body after them.
        let big = [&fixed[..], &[1, 5, 5, 4, 0, 0, 0, 9], &[0; 64]].concat();
        assert_eq!(
            walk(&big, 0),
            Err(GuardError::CountTooLarge {
                at: 7,
                count: 3,
                remaining: 4
            })
        );
        let huge = [&fixed[..], &[1, 5, 5], &uvarint(0x2600_2600)[..], &[0; 64]].concat();
        assert!(matches!(
            walk(&huge, 0),
            Err(GuardError::CountTooLarge { at: 7, .. })
        ));
        // A size past the end of the body.
        let past = [&fixed[..], &[1, 9, 100, 0]].concat();
        assert!(matches!(
            walk(&past, 0),
            Err(GuardError::LengthTooLarge {
                at: 6,
                len: 100,
                ..
            })
        ));
        // Tag 6 exists from version 1 only.
        let early = [&fixed[..], &[1, 6, 2, 2, b'a']].concat();
        assert_eq!(walk(&early, 1), Ok(early.len()));
        assert!(matches!(
            walk(&early, 0),
            Err(GuardError::TagNotInVersion { tag: 6, .. })
        ));
        // Unknown tags are skipped by size; a huge tagged-field count is refused up front.
        let unknown = [&fixed[..], &[2, 7, 1, 0xff, 8, 0]].concat();
        assert_eq!(walk(&unknown, 0), Ok(unknown.len()));
        let many = [&fixed[..], &uvarint(u32::MAX)[..], &[0; 8]].concat();
        assert!(matches!(
            walk(&many, 0),
            Err(GuardError::CountTooLarge { at: 4, .. })
        ));
    }

    // -- 2. Hostile frames --------------------------------------------------------------------

    #[test]
    fn alter_configs_v0_frame_from_the_abort_is_refused() {
        // i32 frame length stripped; header v1: key 33, version 0, correlation 1, null client
        // id; then a body whose first array count is 0x26002600.
        let frame = [
            0x00, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0x26, 0x00, 0x26, 0x00,
        ];
        assert_eq!(frame.len(), 14);
        let mut buf = Bytes::copy_from_slice(&frame);
        let header = match decode_request_header_from_buffer(&mut buf) {
            Ok(header) => header,
            Err(e) => panic!("header: {e}"),
        };
        assert_eq!(
            (header.request_api_key, header.request_api_version),
            (33, 0)
        );
        assert_eq!(
            check_request_body(33, 0, &buf),
            Err(GuardError::CountTooLarge {
                at: 0,
                count: 0x2600_2600,
                remaining: 0
            })
        );
    }

    #[test]
    fn every_huge_or_negative_count_is_refused_where_it_is() {
        let mut replaced = 0;
        for (key, v) in each_guarded_version() {
            for (i, body) in samples(key, v).iter().enumerate() {
                let (result, sites) = trace(key, v, body);
                assert_eq!(result, Ok(body.len()));
                for site in sites {
                    let what = format!("api key {key} v{v} sample {i} count at {}", site.at);
                    let rest = body.len() - site.at - site.len;
                    let rest_u32 = u32::try_from(rest).unwrap_or(u32::MAX);
                    let (huge, bad): (Vec<Vec<u8>>, Vec<Vec<u8>>) = if site.compact {
                        (
                            vec![
                                uvarint(0x2600_2600),
                                uvarint(u32::MAX),
                                vec![0xff; 5],
                                uvarint(rest_u32 + 2),
                            ],
                            if site.nullable { vec![] } else { vec![vec![0]] },
                        )
                    } else {
                        let mut bad = vec![(-2i32).to_be_bytes().to_vec()];
                        if !site.nullable {
                            bad.push((-1i32).to_be_bytes().to_vec());
                        }
                        (
                            vec![
                                0x2600_2600i32.to_be_bytes().to_vec(),
                                i32::MAX.to_be_bytes().to_vec(),
                                (rest_u32 as i32 + 1).to_be_bytes().to_vec(),
                            ],
                            bad,
                        )
                    };
                    let splice = |count: &[u8]| {
                        [&body[..site.at], count, &body[site.at + site.len..]].concat()
                    };
                    for count in &huge {
                        let hostile = splice(count);
                        assert!(
                            matches!(
                                check_request_body(key, v, &hostile),
                                Err(GuardError::CountTooLarge { at, .. }) if at == site.at
                            ),
                            "{what}: {:?}",
                            check_request_body(key, v, &hostile)
                        );
                        replaced += 1;
                    }
                    for count in &bad {
                        let hostile = splice(count);
                        assert!(
                            matches!(
                                check_request_body(key, v, &hostile),
                                Err(GuardError::BadLength { at, .. }) if at == site.at
                            ),
                            "{what}: {:?}",
                            check_request_body(key, v, &hostile)
                        );
                        replaced += 1;
                    }
                }
            }
        }
        assert!(replaced > 1000, "only {replaced} hostile counts tried");
    }

    #[test]
    fn every_truncation_is_refused() {
        for (key, v) in each_guarded_version() {
            for (i, body) in samples(key, v).iter().enumerate() {
                for cut in 0..body.len() {
                    assert!(
                        check_request_body(key, v, &body[..cut]).is_err(),
                        "api key {key} v{v} sample {i} cut at {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn unguarded_versions_are_refused() {
        assert_eq!(
            check_request_body(0, 12, &[]),
            Err(GuardError::UnknownApi {
                key: 0,
                version: 12
            })
        );
        assert!(check_request_body(3, -1, &[]).is_err());
        assert!(check_request_body(1000, 0, &[]).is_err());
        // Trailing bytes are left alone, as kafka-protocol leaves them.
        let mut body = samples(12, 0)[1].clone();
        let len = body.len();
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(request_body_len(12, 0, &body), Ok(len));
    }

    /// Writes every sample as a whole frame (header, then body) into the directory named by
    /// `WEIR_FUZZ_CORPUS`, to seed `fuzz/fuzz_targets/request_frame.rs`.
    #[test]
    #[ignore = "writes files: run by hand to seed the fuzzer"]
    fn write_fuzz_corpus() {
        let Some(dir) = std::env::var_os("WEIR_FUZZ_CORPUS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        for (key, v) in each_guarded_version() {
            let Ok(api_key) = ApiKey::try_from(key) else {
                panic!("unknown api key {key}");
            };
            let mut header = RequestHeader::default();
            header.request_api_key = key;
            header.request_api_version = v;
            header.correlation_id = 7;
            header.client_id = Some(s("fuzz"));
            let header = encode(&header, api_key.request_header_version(v));
            for (i, body) in samples(key, v).iter().enumerate() {
                let path = dir.join(format!("{key}-{v}-{i}"));
                if let Err(e) = std::fs::write(&path, [&header[..], body].concat()) {
                    panic!("writing {}: {e}", path.display());
                }
            }
        }
    }

    // -- 3. Random and mutated bodies, compared with the real decoder -------------------------

    /// xorshift64*: deterministic, good enough to pick bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            const INTERESTING: [u8; 8] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xfe, 0xff, 0x26];
            if self.below(2) == 0 {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }

        fn mutate(&mut self, body: &mut Vec<u8>) {
            for _ in 0..=self.below(3) {
                let at = self.below(body.len() + 1);
                match self.below(5) {
                    0 if at < body.len() => body[at] = self.byte(),
                    1 => body.insert(at, self.byte()),
                    2 if at < body.len() => {
                        body.remove(at);
                    }
                    3 => body.truncate(at),
                    _ if at + 4 <= body.len() => {
                        let value = [0xff, 0x26, 0x00, 0x7f][self.below(4)];
                        body[at..at + 4].fill(value);
                    }
                    _ => body.push(self.byte()),
                }
            }
        }
    }

    #[test]
    fn random_and_mutated_bodies_never_panic_and_agree_with_the_decoder() {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let (mut accepted, mut bad_utf8) = (0, 0);
        for (key, v) in each_guarded_version() {
            let samples = samples(key, v);
            for round in 0..2000 {
                let body = if round < 500 {
                    (0..rng.below(48)).map(|_| rng.byte()).collect()
                } else {
                    let mut body = samples[round % 3].clone();
                    rng.mutate(&mut body);
                    body
                };
                let Ok(len) = request_body_len(key, v, &body) else {
                    continue;
                };
                accepted += 1;
                assert!(len <= body.len());
                // Safe to decode: the guard accepted it. The decoder must read exactly the bytes
                // the walker read, or refuse a string that is not UTF-8 (the walker does not
                // look inside strings).
                match decoded_len(key, v, &body) {
                    Ok(decoded) => assert_eq!(decoded, len, "api key {key} v{v} {body:?}"),
                    Err(e) if e.contains("utf-8") => bad_utf8 += 1,
                    Err(e) => panic!("api key {key} v{v}: decoder refused {body:?}: {e}"),
                }
            }
        }
        assert!(accepted > 50_000, "only {accepted} bodies accepted");
        assert!(
            bad_utf8 < accepted / 5,
            "{bad_utf8} of {accepted} refused for utf-8"
        );
    }
}
