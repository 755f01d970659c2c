//! etcd's JSON gateway on the wire: base64 keys and values, 64-bit numbers as strings, the
//! answers' shapes, and etcd's own words on an error.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use url::Url;

use super::{ErrorKind, EtcdError, Kv};
use crate::text;

/// The call and the endpoint that answered it, for the errors made of its answer.
pub(super) struct At {
    pub(super) op: &'static str,
    pub(super) endpoint: String,
}

impl At {
    pub(super) fn fail(&self, kind: ErrorKind) -> EtcdError {
        EtcdError::new(self.op, &self.endpoint, kind)
    }

    pub(super) fn malformed(&self, detail: &str) -> EtcdError {
        self.fail(ErrorKind::Malformed(detail.to_owned()))
    }
}

/// The header every etcd answer carries.
#[derive(Deserialize)]
pub(super) struct Header {
    #[serde(deserialize_with = "number")]
    pub(super) revision: i64,
}

#[derive(Deserialize)]
pub(super) struct Txn {
    pub(super) header: Header,
    #[serde(default)]
    pub(super) succeeded: bool,
    #[serde(default)]
    pub(super) responses: Vec<TxnResponse>,
}

#[derive(Deserialize)]
pub(super) struct TxnResponse {
    pub(super) response_range: Option<Range>,
}

#[derive(Deserialize)]
pub(super) struct Range {
    /// Always there in etcd's answer (cluster, member, revision): an answer without it is
    /// not etcd's, whatever else it says.
    #[serde(rename = "header")]
    pub(super) _header: serde::de::IgnoredAny,
    #[serde(default)]
    pub(super) kvs: Vec<RawKv>,
}

/// A key as the gateway sends it: base64 text, revisions as strings.
#[derive(Deserialize)]
pub(super) struct RawKv {
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
    #[serde(deserialize_with = "number")]
    pub(super) create_revision: i64,
    #[serde(deserialize_with = "number")]
    pub(super) mod_revision: i64,
}

impl RawKv {
    pub(super) fn decode(self) -> Result<Kv, String> {
        let text = |field: &str, b64: &str| {
            let bytes = BASE64
                .decode(b64)
                .map_err(|e| format!("`{field}` is not base64: {e}"))?;
            String::from_utf8(bytes).map_err(|_| format!("`{field}` is not UTF-8 text"))
        };
        Ok(Kv {
            key: text("kvs[].key", &self.key)?,
            value: text("kvs[].value", &self.value)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

/// A 64-bit integer, which the gateway sends as a string (a plain number is taken too).
pub(super) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s
            .parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an integer"))),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| D::Error::custom(format!("{n} is not a 64-bit integer"))),
        other => Err(D::Error::custom(format!("{other} is not an integer"))),
    }
}

/// A decode error naming the field (`result.TTL: ...`, `missing field `ID``), without
/// serde_json's position in the line.
pub(super) fn field_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    let inner = match inner.rfind(" at line ") {
        Some(at) => &inner[..at],
        None => &inner,
    };
    let path = e.path().to_string();
    let detail = if path == "." {
        inner.to_owned()
    } else {
        format!("`{path}`: {inner}")
    };
    text::message(&detail)
}

/// etcd's words in an error answer: `{"error": ..., "message": ..., "code": ...}` from a
/// call, `{"error": {"message": ...}}` from a stream.
pub(super) fn etcd_words(answer: &Value) -> Option<&str> {
    let words = answer.get("message").or(answer.pointer("/error/message"));
    words.or(answer.get("error")).and_then(Value::as_str)
}

/// etcd's words from an error answer, or the start of whatever else came.
pub(super) fn etcd_message(body: &[u8]) -> String {
    let answer = serde_json::from_slice(body).unwrap_or(Value::Null);
    match etcd_words(&answer) {
        Some(words) => text::message(words),
        None => text::message(&String::from_utf8_lossy(body)),
    }
}

/// An endpoint as errors show it: without any user or password in the URL.
pub(super) fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// `e` and its causes, outermost first.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}

pub(super) fn b64(text: &str) -> String {
    BASE64.encode(text)
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented (and what follows it dropped); `\0` (every key) for an empty prefix.
pub(super) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
