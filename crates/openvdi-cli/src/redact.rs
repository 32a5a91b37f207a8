//! Credentials never leave the process in text: not in messages, errors, JSON or
//! progress.
//!
//! Two layers, because one is not enough:
//! * [`url`] rewrites a repository URL for display: the user-info part
//!   (`s3://KEY:SECRET@bucket`) and the values of credential-like query parameters
//!   (`?secret_access_key=…`, `?sas_token=…`) become `***`. Every place that shows a
//!   repository (`Store::location`, URL errors) goes through it;
//! * [`scrub`] is the last line: every secret the process knows of (the parts
//!   [`register_url`] took from the repository URL, and the credential environment
//!   variables of each provider) is replaced by `***` in any text before it is
//!   printed (`output`, `main`'s error line). It catches what the first layer cannot
//!   see, e.g. a TOML parse error quoting the config file's `repo = "…"` line.

use std::sync::{Mutex, OnceLock};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not scrubbed from free text: a one- or two-letter
/// "secret" would mangle every message, and is no secret anyway.
const MIN_SCRUB: usize = 4;

/// Environment variables whose values are credentials (object_store's builders read
/// them with `from_env`).
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "OPENVDI_TDS_PASSWORD",
    "OPENVDI_PASSWORD",
    "OPENVDI_NEW_PASSWORD",
];

fn secrets() -> &'static Mutex<Vec<String>> {
    static S: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(Vec::new()))
}

fn remember(s: &str) {
    if s.len() < MIN_SCRUB {
        return;
    }
    let mut v = secrets().lock().unwrap_or_else(|p| p.into_inner());
    for form in [s.to_string(), percent_decode(s)] {
        if form.len() >= MIN_SCRUB && !v.contains(&form) {
            v.push(form);
        }
    }
    // Longest first, so a secret that contains another is masked whole.
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Registers a secret the tool was given or learnt elsewhere (a backup password,
/// the `--tds` login's password), so [`scrub`] masks it.
pub fn register_secret(s: &str) {
    remember(s);
}

/// Registers the credential environment variables (called once at start).
pub fn register_env() {
    for k in SECRET_VARS {
        if let Some(v) = std::env::var_os(k) {
            remember(&v.to_string_lossy());
        }
    }
}

/// True for a query parameter whose value is a credential.
pub fn is_secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "key",
        "token",
        "password",
        "sas",
        "sig",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Splits `scheme://[userinfo@]rest[?query]` without allocating a URL parser (the
/// repository URL may also be a plain path, which has no scheme).
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    rest: &'a str,
    query: Option<&'a str>,
}

fn split(u: &str) -> Option<Parts<'_>> {
    let (scheme, after) = u.split_once("://")?;
    let (before_q, query) = match after.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (after, None),
    };
    // The user-info ends at the last '@' of the authority (a secret may hold '@'
    // only percent-encoded, but be generous: take the last '@' before the first '/').
    let authority_end = before_q.find('/').unwrap_or(before_q.len());
    let (userinfo, rest) = match before_q[..authority_end].rfind('@') {
        Some(at) => (Some(&before_q[..at]), &before_q[at + 1..]),
        None => (None, before_q),
    };
    Some(Parts {
        scheme,
        userinfo,
        rest,
        query,
    })
}

/// Registers the secrets a repository URL carries, so [`scrub`] masks them wherever
/// they turn up.
pub fn register_url(u: &str) {
    let Some(p) = split(u) else { return };
    if let Some(ui) = p.userinfo {
        remember(ui);
        let (user, pass) = ui.split_once(':').unwrap_or((ui, ""));
        remember(user);
        remember(pass);
    }
    for (k, v) in p.query.into_iter().flat_map(query_pairs) {
        if is_secret_param(k) {
            remember(v);
        }
    }
}

/// `k=v&k2=v2` pairs (a key without `=` has an empty value).
pub fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// The repository URL for display: credentials replaced by `***`.
pub fn url(u: &str) -> String {
    let Some(p) = split(u) else {
        return scrub(u);
    };
    let mut out = format!("{}://", p.scheme);
    if p.userinfo.is_some() {
        out.push_str(MASK);
        out.push('@');
    }
    out.push_str(p.rest);
    if let Some(q) = p.query {
        let shown: Vec<String> = query_pairs(q)
            .map(|(k, v)| {
                if is_secret_param(k) {
                    format!("{k}={MASK}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        out.push('?');
        out.push_str(&shown.join("&"));
    }
    scrub(&out)
}

/// `text` with every registered secret replaced by `***`.
pub fn scrub(text: &str) -> String {
    let v = secrets().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in v.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// `%XX` decoding (invalid sequences are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(n) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            url("s3://AKIDEXAMPLE:wJalrXUtnFEMI%2FK7MDENG@bucket/pre/fix"),
            "s3://***@bucket/pre/fix"
        );
        assert_eq!(
            url("s3://bucket/p?region=eu-west-1&secret_access_key=abc%2Bdef&aws_session_token=tok123"),
            "s3://bucket/p?region=eu-west-1&secret_access_key=***&aws_session_token=***"
        );
        assert_eq!(url("/var/backups/repo"), "/var/backups/repo");
        assert_eq!(url("s3://bucket"), "s3://bucket");
        // An '@' after the first '/' is part of the path, not user-info.
        assert_eq!(url("s3://bucket/a@b"), "s3://bucket/a@b");
    }

    #[test]
    fn registered_secrets_are_scrubbed_from_any_text() {
        register_url("s3://AKIDSCRUBTEST:s3cr%2Ft-scrub@bucket/x?sas_token=sv%3D2020-scrub");
        let t = "TOML error: repo = \"s3://AKIDSCRUBTEST:s3cr%2Ft-scrub@bucket\" and s3cr/t-scrub \
                 and sv=2020-scrub";
        let s = scrub(t);
        assert!(!s.contains("s3cr"), "{s}");
        assert!(!s.contains("AKIDSCRUBTEST"), "{s}");
        assert!(!s.contains("2020-scrub"), "{s}");
        assert!(s.starts_with("TOML error"), "{s}");
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
