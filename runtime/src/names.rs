//! The names of things every layer refers to: a module by its hash
//! ([`ModuleHash`]) and a task by its name ([`TaskName`]). Each is parsed
//! once at the edge, with a typed error naming what is wrong, and carried
//! as its type inside; their text forms are what URLs, `runner.toml`, the
//! API and stored records use.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The identity of a module: the sha256 of its component bytes.
///
/// Shown and parsed as `sha256:<64 hex digits>`, the form used in URLs, in
/// `runner.toml` and in stored records.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Like [`str::parse`], but also accepts the bare hex digits and
    /// surrounding blanks (what people paste into a CLI or a URL).
    pub fn parse_lenient(s: &str) -> Result<Self, ParseHashError> {
        let s = s.trim();
        if s.starts_with("sha256:") {
            s.parse()
        } else {
            format!("sha256:{s}").parse()
        }
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHashError {
    #[error("a module hash starts with `sha256:`")]
    MissingPrefix,
    #[error("a module hash has 64 hex digits after `sha256:`, found {0} characters")]
    WrongLength(usize),
    #[error("a module hash has only hex digits after `sha256:`")]
    NotHex,
}

impl FromStr for ModuleHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or(ParseHashError::MissingPrefix)?;
        if hex_part.len() != 64 {
            return Err(ParseHashError::WrongLength(hex_part.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut out)
            .map_err(|_| ParseHashError::NotHex)?;
        Ok(Self(out))
    }
}

impl serde::Serialize for ModuleHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ModuleHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a text is not a name (of a task, a beat): names appear in URLs,
/// Redis keys and metric labels, so they are 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 _ - . :`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long; at most 100")]
    TooLong(usize),
    #[error("{0:?} must start with a letter or digit")]
    BadStart(String),
    #[error("{name:?} contains {found:?}; allowed: letters, digits, `_ - . :`")]
    BadChar { name: String, found: char },
}

pub const MAX_NAME_LEN: usize = 100;

/// Checks `name` against the rules of [`NameError`].
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart(name.to_string()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            found,
        });
    }
    Ok(())
}

/// A task name (the rules of [`NameError`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskName(String);

/// Why a text is not a [`TaskName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task name {0}")]
pub struct TaskNameError(#[from] pub NameError);

impl TaskName {
    pub fn new(name: impl Into<String>) -> Result<Self, TaskNameError> {
        let name = name.into();
        Self::validate(&name)?;
        Ok(TaskName(name))
    }

    /// Checks `name` without keeping it.
    pub fn validate(name: &str) -> Result<(), TaskNameError> {
        Ok(check_name(name)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for TaskName {
    type Err = TaskNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for TaskName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TaskName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TaskName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TaskName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl serde::Serialize for TaskName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TaskName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TaskName::new(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_text() {
        let h = ModuleHash::of(b"component");
        let text = h.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<ModuleHash>(), Ok(h));
        assert_eq!(ModuleHash::parse_lenient(&h.to_hex()), Ok(h));
        assert_eq!(
            ModuleHash::parse_lenient(&format!(
                " {} ",
                text.to_uppercase().replace("SHA256", "sha256")
            )),
            Ok(h)
        );
        assert_eq!(
            "abc".parse::<ModuleHash>(),
            Err(ParseHashError::MissingPrefix)
        );
        assert_eq!(
            "sha256:abc".parse::<ModuleHash>(),
            Err(ParseHashError::WrongLength(3))
        );
        let not_hex = format!("sha256:{}", "z".repeat(64));
        assert_eq!(not_hex.parse::<ModuleHash>(), Err(ParseHashError::NotHex));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<ModuleHash>(&json).unwrap(), h);
    }

    #[test]
    fn task_names_are_checked_with_a_reason() {
        assert!(TaskName::new("reminder.daily:v2").is_ok());
        assert_eq!(TaskName::new(""), Err(TaskNameError(NameError::Empty)));
        assert_eq!(
            TaskName::new("x".repeat(101)).unwrap_err().to_string(),
            "task name is 101 bytes long; at most 100"
        );
        assert_eq!(
            TaskName::new("-x"),
            Err(TaskNameError(NameError::BadStart("-x".into())))
        );
        assert_eq!(
            check_name("a b"),
            Err(NameError::BadChar {
                name: "a b".into(),
                found: ' '
            })
        );
        assert!(serde_json::from_str::<TaskName>("\"a/b\"").is_err());
    }
}
