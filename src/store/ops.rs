//! Ops: the unit of work inside a `cf3_batch` call (see `lua/chatfleet.lua`).
//!
//! An op travels as plain ARGV strings: its kind, its key index, its field count, then its fields,
//! plus the keys it touches. Plain strings cost the function less than a MessagePack array per op
//! (no unpacking, no table per op: docs/benchmarks.md, "Flat ops"). The key index (where its keys
//! start in the call's KEYS) is only known when the batch is assembled, so it is added then.

use bytes::Bytes;
use fred::types::Value;

use crate::keys::{delta_block, session_block, turn_block};

/// One op, ready to join a batch.
#[derive(Debug)]
pub(crate) struct Op {
    /// The op's kind, for errors and metrics.
    pub kind: &'static str,
    /// Every key the op touches, in the layout its kind expects.
    pub keys: Vec<String>,
    /// The op's fields, in the order its Lua function reads them.
    pub fields: Vec<Value>,
}

impl Op {
    /// Appends the op's ARGV entries to `args`, with its keys starting at `k` (1-based, as Lua
    /// indexes KEYS). The fields are moved out.
    pub fn push_args(&mut self, k: usize, args: &mut Vec<Value>) {
        args.push(Value::from_static_str(self.kind));
        args.push(Value::Integer(k as i64));
        args.push(Value::Integer(self.fields.len() as i64));
        args.append(&mut self.fields);
    }
}

/// Builds an op field by field.
pub(crate) struct OpBuilder {
    kind: &'static str,
    keys: Vec<String>,
    fields: Vec<Value>,
}

impl OpBuilder {
    /// An op on a session (its key block only).
    pub fn session(kind: &'static str, base: &str) -> Self {
        let keys = session_block(base).into();
        Self { kind, keys, fields: Vec::with_capacity(16) }
    }

    /// An op on one turn of a session (session and turn blocks).
    pub fn turn(kind: &'static str, base: &str, turn_id: &str) -> Self {
        let mut b = Self::session(kind, base);
        b.keys.extend(turn_block(base, turn_id));
        b
    }

    /// A delta of one turn in the delta layout (`emitc`): only the keys it writes.
    pub fn delta(kind: &'static str, base: &str, turn_id: &str) -> Self {
        Self { kind, keys: delta_block(base, turn_id).into(), fields: Vec::with_capacity(8) }
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

    /// How many keys the op declares so far: the index, counted from the op's key index, that
    /// the next [`OpBuilder::key`] gets.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn str(mut self, s: &str) -> Self {
        self.fields.push(Value::from(s));
        self
    }

    /// Opaque bytes (a Lua string holds any bytes).
    pub fn bin(mut self, b: &[u8]) -> Self {
        self.fields.push(Value::Bytes(Bytes::copy_from_slice(b)));
        self
    }

    /// A structured value, as the MessagePack it serialises to: one field, which the function
    /// unpacks only when it needs the value.
    pub fn value<T: serde::Serialize>(self, v: &T) -> Self {
        // Serialising plain data into a Vec cannot fail.
        let packed = rmp_serde::to_vec_named(v).unwrap_or_default();
        self.bin(&packed)
    }

    pub fn int(mut self, n: i64) -> Self {
        self.fields.push(Value::Integer(n));
        self
    }

    pub fn uint(mut self, n: u64) -> Self {
        // Redis receives every argument as a string: a u64 past i64 goes as its decimal text.
        self.fields.push(i64::try_from(n).map(Value::Integer).unwrap_or_else(|_| Value::from(n.to_string())));
        self
    }

    pub fn build(self) -> Op {
        Op { kind: self.kind, keys: self.keys, fields: self.fields }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_is_its_kind_key_index_field_count_and_fields() {
        let mut op = OpBuilder::turn("emit", "cf:{p01}:s:t:s", "tid").str("tid").uint(3).build();
        assert_eq!(op.keys.len(), 11);
        assert_eq!(op.keys[0], "cf:{p01}:s:t:s:meta");
        assert_eq!(op.keys[9], "cf:{p01}:s:t:s:turn:tid");
        let mut args = vec![Value::from("settings")];
        op.push_args(23, &mut args);
        let texts: Vec<String> = args.iter().map(|v| v.as_string().unwrap()).collect();
        assert_eq!(texts, ["settings", "emit", "23", "2", "tid", "3"]);
    }

    #[test]
    fn a_u64_past_i64_goes_as_its_decimal_text() {
        let op = OpBuilder::session("x", "cf:{p01}:s:t:s").uint(u64::MAX).build();
        assert_eq!(op.fields[0].as_string().as_deref(), Some("18446744073709551615"));
    }
}
