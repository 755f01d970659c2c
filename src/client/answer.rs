//! Reading a provider's answers: a listing page record by record (one bad record cannot make
//! the whole listing unreadable), any answer naming the field that did not fit, and the
//! provider's own words from an error body.

use serde::de::DeserializeOwned;

use crate::model::{Page, Snapshot};
use crate::provider::{ApiError, ListedPage, Unreadable};
use crate::text;

/// A page of a listing, each record read on its own so that one that does not fit (a
/// hand-made snapshot with `created_at: null`) cannot make the whole listing unreadable.
pub fn decode_page(body: &[u8], what: &str) -> Result<ListedPage, ApiError> {
    let page: Page<Box<serde_json::value::RawValue>> = decode(body, what)?;
    let mut snapshots = Vec::with_capacity(page.results.len());
    let mut unreadable = Vec::new();
    for (index, raw) in page.results.iter().enumerate() {
        let de = &mut serde_json::Deserializer::from_str(raw.get());
        match serde_path_to_error::deserialize::<_, Snapshot>(de) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." {
                    format!("results[{index}]")
                } else {
                    format!("results[{index}].{path}")
                };
                let loose: serde_json::Value =
                    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null);
                unreadable.push(Unreadable {
                    id: loose.get("id").map(|id| {
                        text::message(&id.as_str().map_or_else(|| id.to_string(), str::to_owned))
                    }),
                    server: loose
                        .get("server")
                        .and_then(|s| s.get("id"))
                        .and_then(serde_json::Value::as_u64),
                    error: text::message(&format!("{field}: {}", without_position(e.inner()))),
                });
            }
        }
    }
    Ok(ListedPage {
        count: page.count,
        next: page.next,
        records: page.results.len(),
        snapshots,
        unreadable,
    })
}

/// A decode error without serde_json's "at line 1 column 18", which would point into the
/// record rather than into the answer.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) if e.line() > 0 => text[..at].to_owned(),
        _ => text,
    }
}

/// The provider's own words from an error body: DRF's `detail`, or `message`/`error`, or the
/// text itself; escaped and shortened ([`text::message`]), as they end up in logs, the run
/// log, the `once` summary and alerts.
pub(super) fn provider_message(body: &[u8]) -> String {
    text::message(&provider_words(body))
}

fn provider_words(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["detail", "message", "error", "non_field_errors"] {
            match value.get(key) {
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                    return items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join("; ")
                }
                _ => {}
            }
        }
        if let Some(map) = value.as_object() {
            // DRF field errors: {"name": ["This field is required."]}
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_string().trim_matches(['[', ']', '"'])))
                .collect();
            if !fields.is_empty() {
                return fields.join("; ");
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no message".into()
    } else {
        text.chars().take(text::MAX_MESSAGE_CHARS + 1).collect()
    }
}

/// Decodes an answer, naming the field that did not fit (`results[0].created_at: ...`).
pub(super) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Decode {
            what: what.to_owned(),
            message: text::message(&if path == "." {
                e.inner().to_string()
            } else {
                format!("field {path}: {}", e.inner())
            }),
        }
    })
}
