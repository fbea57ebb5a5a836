//! The walker over a request body. It reads exactly what kafka-protocol's decoder reads, in the
//! same order, following a [`super::schema`] table, and allocates nothing (except, in tests, the
//! list of count positions).

use super::schema::{schema, Elem, Field, Ty};
use super::GuardError;
use crate::handlers::is_supported;
use kafka_protocol::messages::ApiKey;

/// Where an array count was read (tests overwrite it with hostile values).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct CountSite {
    pub(super) at: usize,
    pub(super) len: usize,
    pub(super) compact: bool,
    pub(super) nullable: bool,
    pub(super) count: u64,
}

pub(super) struct Walker<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
    /// Where the current region ends: the body, or a known tagged field's declared size.
    end: usize,
    version: i16,
    flexible: bool,
    #[cfg(test)]
    pub(super) sites: Vec<CountSite>,
}

impl<'a> Walker<'a> {
    /// A walker at the start of `buf`, and the top-level fields of the request, if `key` at
    /// `version` is in [`crate::handlers::SUPPORTED`].
    pub(super) fn for_request(
        key: i16,
        version: i16,
        buf: &'a [u8],
    ) -> Result<(Self, &'static [Field]), GuardError> {
        let unknown = GuardError::UnknownApi { key, version };
        let api = match ApiKey::try_from(key) {
            Ok(api_key) if is_supported(api_key, version) => schema(api_key),
            _ => None,
        }
        .ok_or(unknown)?;
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

    /// A walker over `buf` at `version`, flexible, for schemas written in tests.
    #[cfg(test)]
    pub(super) fn flexible(buf: &'a [u8], version: i16) -> Self {
        Walker {
            buf,
            pos: 0,
            end: buf.len(),
            version,
            flexible: true,
            sites: Vec::new(),
        }
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

    pub(super) fn walk_struct(&mut self, fields: &'static [Field]) -> Result<(), GuardError> {
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
