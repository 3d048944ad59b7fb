//! Ops: the unit of work inside a `cf2_batch` call (see `lua/chatfleet.lua`).
//!
//! An op is a MessagePack array `{kind, key index, fields…}` plus the keys it touches. Its key
//! index (where its keys start in the call's KEYS) is only known when the batch is assembled, so
//! it is written as a fixed-width u32 and patched then.

use bytes::Bytes;

use crate::keys::{delta_block, session_block, turn_block};

/// One op, ready to join a batch.
#[derive(Debug)]
pub(crate) struct Op {
    /// The op's kind, for errors and metrics.
    pub kind: &'static str,
    /// Every key the op touches, in the layout its kind expects.
    pub keys: Vec<String>,
    /// The encoded op, with a placeholder key index at `k_at`.
    bytes: Vec<u8>,
    k_at: usize,
}

impl Op {
    /// The encoded op with its keys starting at `k` (1-based, as Lua indexes KEYS).
    pub fn encode_at(&self, k: u32) -> Bytes {
        let mut b = self.bytes.clone();
        b[self.k_at..self.k_at + 4].copy_from_slice(&k.to_be_bytes());
        Bytes::from(b)
    }
}

/// Builds an op field by field.
pub(crate) struct OpBuilder {
    kind: &'static str,
    keys: Vec<String>,
    fields: Vec<u8>,
    count: u32,
}

impl OpBuilder {
    /// An op on a session (its key block only).
    pub fn session(kind: &'static str, base: &str) -> Self {
        let keys = session_block(base).into();
        Self { kind, keys, fields: Vec::with_capacity(64), count: 0 }
    }

    /// An op on one turn of a session (session and turn blocks).
    pub fn turn(kind: &'static str, base: &str, turn_id: &str) -> Self {
        let mut b = Self::session(kind, base);
        b.keys.extend(turn_block(base, turn_id));
        b
    }

    /// A delta of one turn in the delta layout (`emitc`): only the keys it writes.
    pub fn delta(kind: &'static str, base: &str, turn_id: &str) -> Self {
        Self { kind, keys: delta_block(base, turn_id).into(), fields: Vec::with_capacity(64), count: 0 }
    }

    /// Adds a key after the blocks (the partition's turns stream, its dead-letter stream).
    pub fn key(mut self, key: String) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds keys after the blocks, if any (the archive stream when archiving is on).
    pub fn keys(mut self, keys: impl IntoIterator<Item = String>) -> Self {
        self.keys.extend(keys);
        self
    }

    pub fn str(mut self, s: &str) -> Self {
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_str(&mut self.fields, s);
        self.count += 1;
        self
    }

    /// Opaque bytes. Written as a MessagePack *str*: Redis's `cmsgpack` has no bin types, and a
    /// Lua string holds any bytes.
    pub fn bin(mut self, b: &[u8]) -> Self {
        let _ = rmp::encode::write_str_len(&mut self.fields, b.len() as u32);
        self.fields.extend_from_slice(b);
        self.count += 1;
        self
    }

    /// A structured value, as the MessagePack map or array it serialises to (Lua's `cmsgpack`
    /// hands the op a nested table).
    pub fn value<T: serde::Serialize>(mut self, v: &T) -> Self {
        // Serialising plain data into a Vec cannot fail.
        let _ = rmp_serde::encode::write_named(&mut self.fields, v);
        self.count += 1;
        self
    }

    pub fn int(mut self, n: i64) -> Self {
        let _ = rmp::encode::write_sint(&mut self.fields, n);
        self.count += 1;
        self
    }

    pub fn uint(mut self, n: u64) -> Self {
        let _ = rmp::encode::write_uint(&mut self.fields, n);
        self.count += 1;
        self
    }

    pub fn build(self) -> Op {
        let mut bytes = Vec::with_capacity(self.fields.len() + 16);
        let _ = rmp::encode::write_array_len(&mut bytes, self.count + 2);
        let _ = rmp::encode::write_str(&mut bytes, self.kind);
        let _ = rmp::encode::write_u32(&mut bytes, 0);
        let k_at = bytes.len() - 4;
        bytes.extend_from_slice(&self.fields);
        Op { kind: self.kind, keys: self.keys, bytes, k_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_index_is_patched_in_place() {
        let op = OpBuilder::turn("emit", "cf:{p01}:s:t:s", "tid").str("tid").uint(3).build();
        assert_eq!(op.keys.len(), 11);
        assert_eq!(op.keys[0], "cf:{p01}:s:t:s:meta");
        assert_eq!(op.keys[9], "cf:{p01}:s:t:s:turn:tid");
        let v: (String, u32, String, u64) = rmp_serde::from_slice(&op.encode_at(23)).unwrap();
        assert_eq!(v, ("emit".into(), 23, "tid".into(), 3));
    }
}
