//! The one configuration loader of the Custos servers: the bridge, the vault node server, the
//! external relay and the cloud server each describe their file as a [`Component`] and load it
//! with [`load`].
//!
//! What every component gets, the same way:
//!
//! * the file is TOML of at most [`MAX_CONFIG_LEN`] bytes, checked before it is read;
//! * every top-level field can be overridden by the environment variable
//!   `CUSTOS_<COMPONENT>_<FIELD>` (upper case), as deployments commonly inject settings;
//!   a variable with the component's prefix that names no field is refused like an unknown
//!   field in the file (components deny unknown fields);
//! * relative paths in the file (and in overrides) are relative to the file's folder, not to
//!   the working directory of whoever started the process;
//! * the component's own checks ([`Component::check`]) run last, so a loaded configuration is
//!   always a usable one.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest configuration file read (bytes).
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// A configuration that cannot be used.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, too large).
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The TOML did not parse, names an unknown field, or a value is unusable.
    #[error("invalid configuration {path}: {reason}")]
    Invalid {
        /// File (or the environment variable at fault).
        path: String,
        /// Why.
        reason: String,
    },
}

/// A server's configuration file.
pub trait Component: DeserializeOwned + Serialize {
    /// The component's name in its environment overrides: `CUSTOS_<COMPONENT>_<FIELD>`.
    const COMPONENT: &'static str;
    /// Top-level fields whose override is an integer (every other override is a string).
    const INTEGER_FIELDS: &'static [&'static str] = &[];

    /// The paths of the configuration that are resolved against the file's folder.
    fn paths(&mut self) -> Vec<&mut PathBuf>;

    /// The component's own checks (names, ranges, consistency), with the file's folder for
    /// defaults that live beside it.
    fn check(&mut self, dir: &Path) -> Result<(), String>;
}

/// Loads `path` as `C` with the process environment's overrides.
pub fn load<C: Component>(path: &Path) -> Result<C, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// Loads `path` as `C` with the overrides found in `env` (name, value).
pub fn load_with_env<C: Component>(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let shown = path.display().to_string();
    let read = |reason: String| ConfigError::Read {
        path: shown.clone(),
        reason,
    };
    let invalid = |path: &str, reason: String| ConfigError::Invalid {
        path: path.to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| read(e.to_string()))?
        .len();
    if len > MAX_CONFIG_LEN {
        return Err(read(format!("{len} bytes, at most {MAX_CONFIG_LEN}")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(&shown, e.to_string()))?;
    let prefix = format!("CUSTOS_{}_", C::COMPONENT.to_ascii_uppercase());
    for (name, value) in env {
        let Some(field) = name.strip_prefix(&prefix) else {
            continue;
        };
        let field = field.to_ascii_lowercase();
        let value = if C::INTEGER_FIELDS.contains(&field.as_str()) {
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|e| invalid(&name, format!("not an integer: {e}")))?;
            toml::Value::Integer(n)
        } else {
            toml::Value::String(value)
        };
        table.insert(field, value);
    }
    let mut config: C = table
        .try_into()
        .map_err(|e: toml::de::Error| invalid(&shown, e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    for p in config.paths() {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    config
        .check(&dir)
        .map_err(|reason| invalid(&shown, reason))?;
    Ok(config)
}

/// Writes `config` as TOML to `path` (what the deployment tooling generates).
pub fn save<C: Component>(config: &C, path: &Path) -> std::io::Result<()> {
    let text = toml::to_string_pretty(config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        file: PathBuf,
        #[serde(default)]
        count: u32,
    }

    impl Component for Sample {
        const COMPONENT: &'static str = "sample";
        const INTEGER_FIELDS: &'static [&'static str] = &["count"];
        fn paths(&mut self) -> Vec<&mut PathBuf> {
            vec![&mut self.file]
        }
        fn check(&mut self, _dir: &Path) -> Result<(), String> {
            if self.count > 10 {
                return Err(format!("count {} above 10", self.count));
            }
            Ok(())
        }
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("sample.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_resolve_against_the_files_folder_and_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "name = \"a\"\nfile = \"x/y.pem\"\n");
        let s: Sample = load_with_env(
            &p,
            env(&[
                ("CUSTOS_SAMPLE_COUNT", "7"),
                ("CUSTOS_OTHER_NAME", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.file, dir.path().join("x/y.pem"));
        assert_eq!(s.count, 7);
        assert_eq!(s.name, "a");
        let s: Sample = load_with_env(&p, env(&[("CUSTOS_SAMPLE_FILE", "/abs/z")])).unwrap();
        assert_eq!(s.file, PathBuf::from("/abs/z"));
    }

    #[test]
    fn unknown_fields_bad_overrides_and_failed_checks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "name = \"a\"\nfile = \"f\"\nbogus = 1\n");
        let e = load_with_env::<Sample>(&p, env(&[])).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let p = write(dir.path(), "name = \"a\"\nfile = \"f\"\n");
        let e = load_with_env::<Sample>(&p, env(&[("CUSTOS_SAMPLE_TYPO", "1")])).unwrap_err();
        assert!(e.to_string().contains("typo"), "{e}");
        let e = load_with_env::<Sample>(&p, env(&[("CUSTOS_SAMPLE_COUNT", "x")])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { path, .. } if path == "CUSTOS_SAMPLE_COUNT"),
            "{e}"
        );
        let e = load_with_env::<Sample>(&p, env(&[("CUSTOS_SAMPLE_COUNT", "11")])).unwrap_err();
        assert!(e.to_string().contains("above 10"), "{e}");
    }

    #[test]
    fn oversized_and_missing_files_are_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let big = "#".repeat(MAX_CONFIG_LEN as usize + 1);
        let p = write(dir.path(), &big);
        let e = load_with_env::<Sample>(&p, env(&[])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { reason, .. } if reason.contains("at most")),
            "{e}"
        );
        let e = load_with_env::<Sample>(&dir.path().join("none.toml"), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
