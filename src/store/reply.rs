//! Reading the nested array replies of the Lua functions.

use bytes::Bytes;
use fred::types::Value;

use super::StoreError;

/// A function's reply array, read front to back with typed accessors.
pub(super) struct Reply {
    function: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    pub fn new(function: &'static str, v: Value) -> Result<Self, StoreError> {
        match v {
            Value::Array(items) => Ok(Self { function, items: items.into_iter() }),
            other => Err(bad(function, format!("expected an array, got {:?}", other.kind()))),
        }
    }

    fn next(&mut self) -> Result<Value, StoreError> {
        self.items.next().ok_or_else(|| bad(self.function, "reply too short".into()))
    }

    pub fn string(&mut self) -> Result<String, StoreError> {
        let v = self.next()?;
        v.as_string().ok_or_else(|| bad(self.function, format!("expected a string, got {:?}", v.kind())))
    }

    pub fn bytes(&mut self) -> Result<Bytes, StoreError> {
        match self.next()? {
            Value::Bytes(b) => Ok(b),
            Value::String(s) => Ok(s.into_inner()),
            Value::Null => Ok(Bytes::new()),
            other => Err(bad(self.function, format!("expected bytes, got {:?}", other.kind()))),
        }
    }

    pub fn int(&mut self) -> Result<i64, StoreError> {
        let v = self.next()?;
        v.as_i64().ok_or_else(|| bad(self.function, format!("expected an integer, got {:?}", v.kind())))
    }

    pub fn array(&mut self) -> Result<Reply, StoreError> {
        let v = self.next()?;
        Reply::new(self.function, v)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bad(&self, detail: impl Into<String>) -> StoreError {
        bad(self.function, detail.into())
    }
}

fn bad(function: &'static str, detail: String) -> StoreError {
    StoreError::Reply { function, detail }
}
