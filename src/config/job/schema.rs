//! The job file's key list, derived from the section types themselves.
//!
//! `job_section!` declares a section's struct and its [`Section::KEYS`] from one field list, and
//! each field's [`KeyKind`] comes from its Rust type through [`KeyType`], so a key is written once.
//! The document checks, `--set`, did-you-mean and the hosted mapping all walk this tree.

use std::path::PathBuf;

use super::values::{DeviceName, DtypeName};
use crate::data::LossOn;
use crate::lora::TargetModules;
use crate::quant::Quantize;

/// One key of a section: its name, what it holds, and whether it must be written.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub kind: KeyKind,
    /// Written with no default in its section: the file must give it.
    pub required: bool,
}

/// What a key must hold, checked before serde sees the table so that errors name key and line.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    Str,
    Bool,
    /// A non-negative integer.
    Count,
    /// An integer or a float.
    Number,
    /// A string or a list of strings.
    Names,
    /// A list of strings.
    Strings,
    /// A string (a path) or a number (a fraction).
    PathOrFraction,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A string that this function accepts, or its message (`must be ... (got ...)`).
    Parsed(fn(&str) -> Result<(), String>),
    /// A table with these keys (`[section]`, `[eval.judge]`).
    Table(&'static [Key]),
    /// An array of tables with these keys (`[[eval.check]]`).
    Tables(&'static [Key]),
    /// A table whose content its reader checks (`[hosted]`).
    FreeTable,
    /// An array of tables whose content its reader checks (`[[judge.providers]]`).
    FreeTables,
}

/// A struct that is a table of the job file.
pub trait Section {
    const KEYS: &'static [Key];
}

/// The kind of value a field's type holds in TOML.
pub trait KeyType {
    const KIND: KeyKind;
}

macro_rules! key_types {
    ($($ty:ty => $kind:expr),* $(,)?) => {
        $(impl KeyType for $ty { const KIND: KeyKind = $kind; })*
    };
}

key_types! {
    String => KeyKind::Str,
    PathBuf => KeyKind::Str,
    bool => KeyKind::Bool,
    usize => KeyKind::Count,
    u64 => KeyKind::Count,
    f64 => KeyKind::Number,
    TargetModules => KeyKind::Names,
    Quantize => KeyKind::Choice(Quantize::NAMES),
    LossOn => KeyKind::Choice(LossOn::NAMES),
    DtypeName => KeyKind::Parsed(DtypeName::check),
    DeviceName => KeyKind::Parsed(DeviceName::check),
    toml::Table => KeyKind::FreeTable,
    Vec<toml::Table> => KeyKind::FreeTables,
    Vec<String> => KeyKind::Strings,
}

impl<T: KeyType> KeyType for Option<T> {
    const KIND: KeyKind = T::KIND;
}

impl<T: Section> KeyType for Vec<T> {
    const KIND: KeyKind = KeyKind::Tables(T::KEYS);
}

/// Declares a job-file table: the struct (serde, `deny_unknown_fields`, defaults) and its
/// [`Section::KEYS`]. A field with `= default` may be left out; one without must be written.
macro_rules! job_section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $crate::config::job::schema::default_or!($ty $(, $default)?),)* }
            }
        }

        impl $crate::config::job::schema::Section for $name {
            const KEYS: &'static [$crate::config::job::schema::Key] = &[$(
                $crate::config::job::schema::Key {
                    name: $crate::config::job::schema::unraw(stringify!($field)),
                    kind: <$ty as $crate::config::job::schema::KeyType>::KIND,
                    required: $crate::config::job::schema::required!($($default)?),
                },
            )*];
        }

        impl $crate::config::job::schema::KeyType for $name {
            const KIND: $crate::config::job::schema::KeyKind =
                $crate::config::job::schema::KeyKind::Table(
                    <$name as $crate::config::job::schema::Section>::KEYS,
                );
        }
    };
}

macro_rules! default_or {
    ($ty:ty) => {
        <$ty as Default>::default()
    };
    ($ty:ty, $default:expr) => {
        $default
    };
}

macro_rules! required {
    () => {
        true
    };
    ($default:expr) => {
        false
    };
}

pub(crate) use {default_or, job_section, required};

/// A field's key name: `r#trait` is the key `trait`, as serde names it.
pub const fn unraw(name: &'static str) -> &'static str {
    match name.as_bytes() {
        [b'r', b'#', ..] => name.split_at(2).1,
        _ => name,
    }
}

/// The key at `path` (`["train", "lr"]`) under `keys`; array indices are skipped.
pub fn find<'k>(keys: &'k [Key], path: &[&str]) -> Option<&'k Key> {
    let (first, rest) = path.split_first()?;
    let key = keys.iter().find(|k| k.name == *first)?;
    match (rest, key.kind) {
        ([], _) => Some(key),
        (rest, KeyKind::Table(sub)) => find(sub, rest),
        ([index, rest @ ..], KeyKind::Tables(sub)) if index.parse::<usize>().is_ok() => {
            if rest.is_empty() {
                Some(key)
            } else {
                find(sub, rest)
            }
        }
        _ => None,
    }
}

/// Every key's dotted name under `keys` (tables' own names and their keys, in declaration order).
pub fn all_names(keys: &[Key], prefix: &str, out: &mut Vec<(String, &'static str)>) {
    for key in keys {
        let full = if prefix.is_empty() {
            key.name.to_string()
        } else {
            format!("{prefix}.{}", key.name)
        };
        out.push((full.clone(), key.name));
        if let KeyKind::Table(sub) | KeyKind::Tables(sub) = key.kind {
            all_names(sub, &full, out);
        }
    }
}

/// Whether a written value has the type `kind` asks for; the message says what was expected.
pub fn check_kind(kind: KeyKind, value: &toml::Value) -> Result<(), KindError> {
    use toml::Value as V;
    let ok = match (kind, value) {
        (KeyKind::FreeTable, V::Table(_)) => true,
        (KeyKind::Str, V::String(_)) => true,
        (KeyKind::Bool, V::Boolean(_)) => true,
        (KeyKind::Count, V::Integer(n)) => {
            if *n < 0 {
                return Err(KindError::Type(format!(
                    "expected a non-negative integer, found {n}"
                )));
            }
            true
        }
        (KeyKind::Number, V::Integer(_) | V::Float(_)) => true,
        (KeyKind::Names, V::String(_)) => true,
        (KeyKind::Names | KeyKind::Strings, V::Array(items)) => {
            if let Some(bad) = items.iter().find(|v| !v.is_str()) {
                return Err(KindError::Type(format!(
                    "expected a list of strings, found an item {}",
                    describe(bad)
                )));
            }
            true
        }
        (KeyKind::PathOrFraction, V::String(_) | V::Integer(_) | V::Float(_)) => true,
        (KeyKind::Choice(choices), V::String(s)) => {
            if choices.contains(&s.as_str()) {
                return Ok(());
            }
            let hint = super::suggest::nearest(s, choices.iter().map(|c| (*c, *c)))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(KindError::Type(format!(
                "unknown value {s:?} (expected {}{hint})",
                choices.join(", ")
            )));
        }
        (KeyKind::Parsed(check), V::String(s)) => return check(s).map_err(KindError::Value),
        (KeyKind::Table(_), V::Table(_)) => true,
        (KeyKind::Tables(_) | KeyKind::FreeTables, V::Array(items)) => {
            items.iter().all(|v| v.is_table())
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        KeyKind::Str | KeyKind::Parsed(_) => "a string".to_string(),
        KeyKind::Bool => "true or false".to_string(),
        KeyKind::Count => "a non-negative integer".to_string(),
        KeyKind::Number => "a number".to_string(),
        KeyKind::Names => "a string or a list of strings".to_string(),
        KeyKind::Strings => "a list of strings".to_string(),
        KeyKind::PathOrFraction => "a file path or a fraction".to_string(),
        KeyKind::Choice(choices) => format!("one of {}", choices.join(", ")),
        KeyKind::Table(_) | KeyKind::FreeTable => "a table".to_string(),
        KeyKind::Tables(_) | KeyKind::FreeTables => "an array of tables".to_string(),
    };
    Err(KindError::Type(format!(
        "expected {expected}, found {}",
        describe(value)
    )))
}

/// Why a written value does not fit its key.
pub enum KindError {
    /// The wrong type: shown as "`key`: expected ..., found ...".
    Type(String),
    /// A string its parser refuses: shown as "`key` must be ... (got ...)".
    Value(String),
}

impl KindError {
    /// The message for `key`.
    pub fn message(&self, key: &str) -> String {
        match self {
            KindError::Type(msg) => format!("`{key}`: {msg}"),
            KindError::Value(msg) => format!("`{key}` {msg}"),
        }
    }
}

/// A value's type and, for scalars, the value itself: `string "abc"`, `float 0.5`.
pub fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(n) => format!("integer {n}"),
        toml::Value::Float(x) => format!("float {x}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}
