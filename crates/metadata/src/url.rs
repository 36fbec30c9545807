//! Database URL helpers: building SQLite URLs from paths and hiding secrets in logs.

use std::path::Path;

use crate::MetadataError;

/// Which engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

pub(crate) fn engine_of(url: &str) -> Option<Engine> {
    let scheme = url.split_once(':')?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Some(Engine::Sqlite),
        "postgres" | "postgresql" => Some(Engine::Postgres),
        _ => None,
    }
}

/// The SQLite URL for a database file, created if missing: `sqlite://<path>?mode=rwc`.
///
/// `%`, `?` and `#` in the path are percent-encoded, because sqlx would otherwise read them as
/// URL syntax and open a different file. Fails for paths that are not valid UTF-8, since a
/// lossy conversion could also name a different file.
pub fn sqlite_url(path: &Path) -> Result<String, MetadataError> {
    let s = path.to_str().ok_or(MetadataError::InvalidField {
        field: "path",
        reason: "database path is not valid UTF-8",
    })?;
    let mut out = String::with_capacity(s.len() + 20);
    out.push_str("sqlite://");
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out.push_str("?mode=rwc");
    Ok(out)
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token", "sslkey"]
        .iter()
        .any(|s| k.contains(s))
}

/// A copy of a database URL that is safe to log: the password in the user-info part and the
/// values of password-like query parameters (`password`, `sslpassword`, `token`, ...) become
/// `***`.
///
/// Errs on the side of hiding too much: the user-info part is taken to end at the LAST `@`,
/// so an unencoded `@` or `/` inside a password still cannot leak the rest of it.
pub fn redact_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    let after_userinfo = match (head.is_empty(), rest.rfind('@')) {
        (false, Some(at)) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                }
                None => {
                    out.push_str(userinfo);
                    out.push('@');
                }
            }
            &rest[at + 1..]
        }
        _ => rest,
    };
    let (before_fragment, fragment) = match after_userinfo.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (after_userinfo, None),
    };
    match before_fragment.split_once('?') {
        Some((base, query)) => {
            out.push_str(base);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => {
                        out.push_str(k);
                        out.push_str("=***");
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("postgres://bridge:s3cr3t@db.example:5432/custos?sslmode=require"),
            "postgres://bridge:***@db.example:5432/custos?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://u:p@ss/w:rd@host/db"),
            "postgresql://u:***@host/db"
        );
        assert_eq!(
            redact_url("postgres://host/db?user=u&password=hunter2&sslpassword=x"),
            "postgres://host/db?user=u&password=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/custos/meta.db?mode=rwc"),
            "sqlite:///var/lib/custos/meta.db?mode=rwc"
        );
        assert_eq!(redact_url("sqlite:meta.db"), "sqlite:meta.db");
        assert!(!redact_url("postgres://a:b@c?password=zz#frag").contains("zz"));
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a?b#c%d.db")).unwrap(),
            "sqlite:///tmp/a%3Fb%23c%25d.db?mode=rwc"
        );
        assert_eq!(engine_of("sqlite://x"), Some(Engine::Sqlite));
        assert_eq!(engine_of("PostgreSQL://x"), Some(Engine::Postgres));
        assert_eq!(engine_of("mysql://x"), None);
        assert_eq!(engine_of("nocolon"), None);
    }
}
