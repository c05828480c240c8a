//! A small key-value store, namespaced per task name: two tasks never see
//! each other's keys. Needs the `kv` grant; subject to its quota.
//!
//! The typical use is a guard that makes a job idempotent:
//!
//! ```no_run
//! use std::time::Duration;
//! use runner_sdk::{kv, TaskError};
//!
//! fn send_once(user: u64, day: &str) -> Result<(), TaskError> {
//!     let key = format!("remind:{user}:{day}");
//!     if !kv::set_nx(&key, "sent", Some(Duration::from_secs(2 * 86_400)))? {
//!         return Ok(()); // already sent today
//!     }
//!     // ... send the reminder ...
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HostError;
use crate::bindings::runner::task::kv as wit;

/// Stores `value` under `key` only if the key does not exist yet. Returns
/// `true` if it was stored, `false` if the key already existed. With `ttl`,
/// the key expires after that long.
pub fn set_nx(
    key: &str,
    value: impl AsRef<[u8]>,
    ttl: Option<Duration>,
) -> Result<bool, HostError> {
    Ok(wit::set_nx(key, value.as_ref(), ttl.map(millis))?)
}

/// Stores `value` under `key`, replacing any previous value. With `ttl`, the
/// key expires after that long.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), HostError> {
    Ok(wit::set(key, value.as_ref(), ttl.map(millis))?)
}

/// The bytes stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    Ok(wit::get(key)?)
}

/// Deletes `key`. Returns `true` if it existed.
pub fn delete(key: &str) -> Result<bool, HostError> {
    Ok(wit::delete(key)?)
}

/// The value stored under `key` as UTF-8 text, if any. A value that is not
/// UTF-8 is an [`HostError::Invalid`].
pub fn get_string(key: &str) -> Result<Option<String>, HostError> {
    get(key)?.map(|bytes| decode_string(key, bytes)).transpose()
}

/// Stores `value` as JSON under `key`, replacing any previous value.
pub fn set_json<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), HostError> {
    set(key, encode_json(key, value)?, ttl)
}

/// Stores `value` as JSON under `key` only if the key does not exist yet;
/// see [`set_nx`].
pub fn set_nx_json<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<bool, HostError> {
    set_nx(key, encode_json(key, value)?, ttl)
}

/// The JSON value stored under `key`, parsed into `T`, if any. A value that
/// does not parse is an [`HostError::Invalid`].
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HostError> {
    get(key)?.map(|bytes| decode_json(key, &bytes)).transpose()
}

/// Milliseconds for the host, saturating: a TTL of centuries is "forever".
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn decode_string(key: &str, bytes: Vec<u8>) -> Result<String, HostError> {
    String::from_utf8(bytes)
        .map_err(|e| HostError::Invalid(format!("value of kv key {key:?} is not UTF-8: {e}")))
}

fn encode_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, HostError> {
    serde_json::to_vec(value).map_err(|e| {
        HostError::Invalid(format!(
            "cannot encode the value for kv key {key:?} as JSON: {e}"
        ))
    })
}

fn decode_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, HostError> {
    serde_json::from_slice(bytes).map_err(|e| {
        HostError::Invalid(format!(
            "value of kv key {key:?} is not the expected JSON: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_in_millis_saturates() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn json_round_trip_and_errors() {
        let bytes = encode_json("k", &vec![1, 2, 3]).expect("encodes");
        assert_eq!(bytes, b"[1,2,3]");
        let back: Vec<u32> = decode_json("k", &bytes).expect("decodes");
        assert_eq!(back, [1, 2, 3]);
        let err = decode_json::<Vec<u32>>("k", b"{\"a\":1}").expect_err("wrong shape");
        assert!(
            matches!(&err, HostError::Invalid(m) if m.contains("\"k\"")),
            "{err}"
        );
    }

    #[test]
    fn strings_must_be_utf8() {
        assert_eq!(decode_string("k", b"ok".to_vec()), Ok("ok".to_string()));
        assert!(matches!(
            decode_string("k", vec![0xff, 0xfe]),
            Err(HostError::Invalid(_))
        ));
    }
}
