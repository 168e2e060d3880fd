//! Typed, bounds-checked reads of GGUF metadata for the tokenizer, with errors that name the
//! file and key.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::{Error, Result};

/// Typed, bounds-checked access to GGUF metadata, with errors naming the file and key.
pub(super) struct Metadata<'a> {
    pub(super) values: &'a HashMap<String, Value>,
    pub(super) path: &'a Path,
}

impl<'a> Metadata<'a> {
    pub(super) fn error(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: metadata `{key}`: {msg}", self.path.display()))
    }

    pub(super) fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(
            key,
            format!("expected {expected}, found {:?}", found.value_type()),
        )
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    pub(super) fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// An array whose every item `convert` accepts; the error names the first bad item.
    pub(super) fn array_of<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let values = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert(item).ok_or_else(|| self.wrong_type(&format!("{key}[{i}]"), expected, item))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(values))
    }

    pub(super) fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.array_of(key, "a string", |item| match item {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub(super) fn i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.array_of(key, "an i32", |item| {
            integer(item).and_then(|v| i32::try_from(v).ok())
        })
    }

    pub(super) fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.array_of(key, "a float", |item| match item {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => None,
        })
    }

    /// A token id, which must index the vocabulary.
    pub(super) fn token_id(&self, key: &str, vocab_len: usize) -> Result<Option<u32>> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let id = integer(value).ok_or_else(|| self.wrong_type(key, "an integer", value))?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab_len => Ok(Some(id)),
            _ => Err(self.error(
                key,
                format!("token id {id} is out of range (vocabulary of {vocab_len})"),
            )),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}
