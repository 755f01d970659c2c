//! Where secrets come from: the API token from a file, an environment variable or a systemd
//! credential, and webhook tokens; a file readable by others is refused, and no error shows
//! a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use toml::Spanned;

use super::check::Checker;
use super::raw::RawApi;

/// The file systemd's `LoadCredential=api-token:...` puts in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "api-token";

/// Where the token came from, for error messages ("check token_file /etc/...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
    Credential(PathBuf),
    Simulated,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "token_file {}", p.display()),
            Self::Env(v) => write!(f, "token_env ${v}"),
            Self::Credential(p) => write!(f, "the systemd credential {}", p.display()),
            Self::Simulated => f.write_str("the simulated provider's token"),
        }
    }
}

pub(super) fn read_token(
    check: &mut Checker<'_>,
    api: &Spanned<RawApi>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> (Option<SecretString>, TokenSource) {
    let raw = api.get_ref();
    let sources = [
        ("token_file", &raw.token_file),
        ("token_env", &raw.token_env),
        ("token_credential", &raw.token_credential),
    ];
    let set: Vec<(&str, &Spanned<String>)> = sources
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)))
        .collect();
    if let [(first, _), (second, value), ..] = set[..] {
        check.at(
            value.span(),
            format!("api.{second}"),
            format!(
                "{first} and {second} are both set; allowed: one of token_file, token_env, \
                 token_credential"
            ),
        );
    }
    if let Some(var) = &raw.token_env {
        let source = TokenSource::Env(var.get_ref().clone());
        let token = match env.get(var.get_ref()) {
            Some(t) if !t.trim().is_empty() => {
                secret(t).map_err(|e| format!("${} {e}", var.get_ref()))
            }
            _ => Err(format!(
                "the environment variable {} is not set or empty",
                var.get_ref()
            )),
        };
        return match token {
            Ok(t) => (Some(t), source),
            Err(e) => {
                check.at(var.span(), "api.token_env", e);
                (None, source)
            }
        };
    }
    if let Some(name) = &raw.token_credential {
        return read_credential(
            check,
            name.span(),
            "api.token_credential",
            name.get_ref(),
            env,
        );
    }
    if let Some(f) = &raw.token_file {
        let path = PathBuf::from(f.get_ref());
        let token = read_secret_file(
            check,
            f.span(),
            "api.token_file",
            &path,
            CREDENTIAL_NAME,
            warnings,
        );
        return (token, TokenSource::File(path));
    }
    if env.contains_key(CREDENTIALS_DIRECTORY) {
        return read_credential(check, api.span(), "api", CREDENTIAL_NAME, env);
    }
    check.at(
        api.span(),
        "api",
        "no token source; allowed: token_file = \"/etc/snapshot-scheduler/token\", \
         token_env = \"VPS_API_TOKEN\", token_credential = \"NAME\", or none of them under \
         systemd with LoadCredential=api-token:... ($CREDENTIALS_DIRECTORY/api-token)",
    );
    (None, TokenSource::Simulated)
}

/// Where systemd puts a unit's credentials (`LoadCredential=NAME:PATH` makes `NAME` there).
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A secret from a systemd credential, `$CREDENTIALS_DIRECTORY/<name>`. This is how a unit
/// whose user cannot read root's files (`DynamicUser=yes`) gets its secrets: systemd reads
/// the file as root and hands the service a private copy. That copy's mode is systemd's
/// (0400, or 0440 with an ACL for the service user) in a directory only the service can
/// enter, so the token-file mode rule does not apply to it.
pub(super) fn read_credential(
    check: &mut Checker<'_>,
    span: Range<usize>,
    key: &str,
    name: &str,
    env: &BTreeMap<String, String>,
) -> (Option<SecretString>, TokenSource) {
    if !valid_credential_name(name) {
        check.at(
            span,
            key,
            format!(
                "\"{name}\" is not a credential name; allowed: 1 to 255 letters, digits, '-', \
                 '_', '.' or '@', not starting with '.' (the NAME of LoadCredential=NAME:PATH)"
            ),
        );
        return (None, TokenSource::Credential(PathBuf::from(name)));
    }
    let path = if name == CREDENTIAL_NAME {
        // The file the shipped unit loads.
        "/etc/snapshot-scheduler/token".to_owned()
    } else {
        format!("/etc/snapshot-scheduler/{name}")
    };
    let load = format!("LoadCredential={name}:{path}");
    let Some(dir) = env.get(CREDENTIALS_DIRECTORY) else {
        check.at(
            span,
            key,
            format!(
                "the systemd credential \"{name}\" is not available: ${CREDENTIALS_DIRECTORY} \
                 is not set (systemd sets it for a unit that loads credentials); allowed: add \
                 {load} to the unit (systemctl edit snapshot-scheduler), or token_file outside \
                 systemd"
            ),
        );
        return (None, TokenSource::Credential(PathBuf::from(name)));
    };
    let file = Path::new(dir).join(name);
    let source = TokenSource::Credential(file.clone());
    let text = match super::read_text(&file, super::MAX_SECRET_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check.at(
                span,
                key,
                format!(
                    "the systemd credential \"{name}\" is missing ({}: {e}); allowed: a \
                     credential the unit loads: add {load} to the unit (systemctl edit \
                     snapshot-scheduler)",
                    file.display()
                ),
            );
            return (None, source);
        }
        Err(e) => {
            check.at(
                span,
                key,
                format!(
                    "cannot read the systemd credential \"{name}\" ({}): {e}",
                    file.display()
                ),
            );
            return (None, source);
        }
    };
    match secret(&text) {
        Ok(token) => (Some(token), source),
        Err(e) => {
            check.at(span, key, format!("the systemd credential \"{name}\" {e}"));
            (None, source)
        }
    }
}

/// systemd takes any file name; this is the safe part of that (no path, no `:` that would
/// end the NAME in `LoadCredential=NAME:PATH`).
fn valid_credential_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// A secret as it goes into an `Authorization: Bearer` header: surrounding whitespace (a
/// file's trailing newline) removed, and nothing left inside that a token does not hold or a
/// header cannot carry: a line break inside would pass `check` and then fail every request.
/// The error says what was found and where, never the secret; the caller names the source.
fn secret(text: &str) -> Result<SecretString, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some((at, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    {
        let what = match c {
            '\n' | '\r' => "a line break",
            ' ' => "a space",
            '\t' => "a tab",
            c if c.is_control() => "a control character",
            _ => "a non-ASCII character",
        };
        return Err(format!(
            "holds {what} at character {}; allowed: one line of printable ASCII without \
             spaces (a trailing newline is fine)",
            at + 1
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// Reads a token file, refusing one readable by others and warning on group-readable (ssh's
/// rule for private keys). `credential` is the credential name to suggest when this user
/// cannot read the file (the unit's dynamic user cannot read root's files).
pub(super) fn read_secret_file(
    check: &mut Checker<'_>,
    span: Range<usize>,
    key: &str,
    path: &Path,
    credential: &str,
    warnings: &mut Vec<String>,
) -> Option<SecretString> {
    match token_file_mode(path) {
        Err(e) => {
            check.at(span, key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
        Ok(mode) if mode & 0o007 != 0 => {
            check.at(
                span,
                key,
                format!(
                    "{} is readable by others (mode {:o}); allowed: readable by its owner only \
                     (chmod 600 {})",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            );
            return None;
        }
        Ok(mode) if mode & 0o070 != 0 => warnings.push(format!(
            "{} is readable by its group (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )),
        Ok(_) => {}
    }
    let text = match super::read_text(path, super::MAX_SECRET_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            check.at(
                span,
                key,
                format!(
                    "cannot read {path}: {e}; allowed: a file this user can read, or (under the \
                     systemd unit, whose dynamic user cannot read root's files) \
                     token_credential = \"{credential}\" with \
                     LoadCredential={credential}:{path} in the unit",
                    path = path.display()
                ),
            );
            return None;
        }
        Err(e) => {
            check.at(span, key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    secret(&text)
        .map_err(|e| check.at(span, key, format!("{} {e}", path.display())))
        .ok()
}

#[cfg(unix)]
fn token_file_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode())
}

#[cfg(not(unix))]
fn token_file_mode(path: &Path) -> std::io::Result<u32> {
    std::fs::metadata(path).map(|_| 0o600)
}
