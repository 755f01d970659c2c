//! Text that came from the provider, made safe to log, print and send on: control and bidi
//! characters escaped (a name or an error message can neither forge a log line nor drive the
//! terminal nor reorder what is shown), long messages shortened, chat markup neutralised.
//!
//! Escaping is idempotent (its output contains none of the characters it escapes), so text
//! escaped when decoded may safely be escaped again where it is printed.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

/// The longest provider message kept in an error, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// Whether `c` must not reach a log line or a terminal as it is: C0 and C1 controls, DEL,
/// the bidi embeddings, overrides, isolates and marks, and the Unicode line and paragraph
/// separators (which some viewers break lines at).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Secrets that provider text must never carry (the API token), in the forms a provider could
/// quote them back: as sent (after JSON unescaping, which decoding does) and URL-encoded, in
/// any letter case. Kept lower-case.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// From now on, `secret` is written `[redacted]` wherever provider text quotes it.
pub fn keep_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in [secret.to_ascii_lowercase(), encoded.to_ascii_lowercase()] {
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
}

/// `s` with every kept secret replaced by `[redacted]` (ASCII case-insensitively).
fn without_secrets(s: Cow<'_, str>) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut s = s;
    for secret in secrets.iter() {
        let needle = secret.as_bytes();
        let found = |hay: &str| {
            hay.as_bytes()
                .windows(needle.len())
                .position(|w| w.eq_ignore_ascii_case(needle))
        };
        if found(&s).is_none() {
            continue;
        }
        let mut out = String::with_capacity(s.len());
        let mut rest: &str = &s;
        while let Some(at) = found(rest) {
            // An ASCII needle matches only ASCII bytes: both ends are char boundaries.
            out.push_str(&rest[..at]);
            out.push_str("[redacted]");
            rest = &rest[at + needle.len()..];
        }
        out.push_str(rest);
        s = Cow::Owned(out);
    }
    s
}

/// `s` with every unsafe character written as `\n`, `\r`, `\t` or `\u{…}` (hex), the rest
/// unchanged, and any kept secret written `[redacted]`. Borrowed when there is nothing to
/// change (the usual case).
pub fn escape(s: &str) -> Cow<'_, str> {
    without_secrets(escape_controls(s))
}

fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] for an owned string, without a copy when there is nothing to escape.
pub fn escape_owned(s: String) -> String {
    match escape(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(escaped) => escaped,
    }
}

/// A provider's message for an error: escaped, and cut at [`MAX_MESSAGE_CHARS`] (with `…`)
/// so an answer cannot fill the log, the run log or a chat channel.
pub fn message(s: &str) -> String {
    let escaped = escape(s.trim());
    match escaped.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped.into_owned(),
    }
}

/// Text for a chat message (the `text` of a webhook): Slack's markup characters `&`, `<`, `>`
/// escaped as Slack asks (so provider text cannot make a link or a `<!channel>` mention), every
/// `@` replaced by the look-alike `＠` (no `@channel`, `@here`, `@all` or `@someone` in
/// Mattermost), and a Markdown link `[text](url)` broken apart so it shows as typed.
pub fn chat(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in escape(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push('＠'),
            c => out.push(c),
        }
    }
    out.replace("](", "] (")
}

/// Serde: a provider string, escaped as it is decoded.
pub fn escaped<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(escape_owned)
}

/// Serde: an optional provider string, escaped as it is decoded.
pub fn escaped_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(escape_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_writes_controls_and_bidi_as_visible_escapes() {
        let cases: &[(&str, &str)] = &[
            ("web-server-01", "web-server-01"),
            ("", ""),
            ("ünïcödé 名前 ok", "ünïcödé 名前 ok"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("a\tb", "a\\tb"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            ("\u{1b}]0;x\u{7}", "\\u{1b}]0;x\\u{7}"),
            ("nul\0", "nul\\u{0}"),
            ("del\u{7f}", "del\\u{7f}"),
            ("c1\u{9b}31m", "c1\\u{9b}31m"),
            ("c1 \u{85} nel", "c1 \\u{85} nel"),
            ("abc\u{202E}fdp.exe", "abc\\u{202e}fdp.exe"),
            (
                "\u{202A}\u{202B}\u{202C}\u{202D}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            ("\u{200E}\u{200F}\u{061C}", "\\u{200e}\\u{200f}\\u{61c}"),
            ("line\u{2028}para\u{2029}", "line\\u{2028}para\\u{2029}"),
            ("back\\slash stays", "back\\slash stays"),
        ];
        for (input, want) in cases {
            assert_eq!(escape(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn escape_is_idempotent_and_leaves_nothing_unsafe() {
        for input in [
            "a\nb\u{1b}]0;x\u{7}",
            "\u{202E}x\u{2066}",
            "plain",
            "\\u{1b}",
        ] {
            let once = escape(input).into_owned();
            assert_eq!(escape(&once), once, "input {input:?}");
            assert!(!once.chars().any(is_unsafe), "{once:?}");
        }
    }

    #[test]
    fn escape_borrows_when_nothing_needs_escaping() {
        assert!(matches!(
            escape("nightly-20261127T023000Z"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn message_is_escaped_trimmed_and_cut() {
        let cases: &[(&str, &str)] = &[
            ("  Snapshot limit reached.  ", "Snapshot limit reached."),
            (
                "bad\n2026-11-27T02:30:00Z INFO created",
                "bad\\n2026-11-27T02:30:00Z INFO created",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(message(input), *want, "input {input:?}");
        }
        let long = "x".repeat(1000);
        let cut = message(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        let multibyte = "名".repeat(400);
        assert_eq!(message(&multibyte).chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn chat_neutralises_links_mentions_and_markup() {
        let cases: &[(&str, &str)] = &[
            ("plain text", "plain text"),
            ("<!channel> urgent", "&lt;!channel&gt; urgent"),
            (
                "<https://evil.example|click>",
                "&lt;https://evil.example|click&gt;",
            ),
            ("a & b", "a &amp; b"),
            ("@channel @here @all", "＠channel ＠here ＠all"),
            (
                "[re-login](https://evil.example)",
                "[re-login] (https://evil.example)",
            ),
            ("x\n@here", "x\\n＠here"),
            ("\u{202E}gnp", "\\u{202e}gnp"),
        ];
        for (input, want) in cases {
            assert_eq!(chat(input), *want, "input {input:?}");
        }
    }
}
