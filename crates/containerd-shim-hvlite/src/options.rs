//! Runtime options: what containerd passes in `CreateTaskRequest.options`.
//!
//! hvlite takes containerd's generic `runtimeoptions.v1.Options` (`ctr run
//! --runtime-config-path FILE`, or `ConfigPath` under a CRI runtime's `options`), whose
//! `config_path` names a file of `key = value` lines: `kernel`, `agent` (paths). Anything
//! else (another options type, an unknown key, a missing file) is refused, so a typo never
//! silently boots the default.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::CodedInputStream;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use crate::error::ShimError;

/// The options type hvlite accepts (containerd's name, without a type URL host).
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// hvlite's runtime options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub kernel: Option<PathBuf>,
    pub agent: Option<PathBuf>,
}

/// Reads `any` (absent: the defaults).
pub fn parse(any: Option<&Any>) -> Result<Options, ShimError> {
    let Some(any) = any else {
        return Ok(Options::default());
    };
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS {
        return Err(ShimError::Invalid(format!(
            "unknown runtime options type {:?}: hvlite takes {RUNTIME_OPTIONS} (ConfigPath)",
            any.type_url
        )));
    }
    let (config_path, body) = decode_runtime_options(&any.value)?;
    let text = if !body.is_empty() {
        String::from_utf8(body)
            .map_err(|_| ShimError::Invalid("runtime options ConfigBody is not UTF-8".into()))?
    } else if config_path.is_empty() {
        return Ok(Options::default());
    } else {
        std::fs::read_to_string(&config_path).map_err(|e| {
            ShimError::Invalid(format!("runtime options ConfigPath {config_path}: {e}"))
        })?
    };
    parse_text(&text, &config_path)
}

/// Decodes `runtimeoptions.v1.Options` (1: type_url, 2: config_path, 3: config_body).
fn decode_runtime_options(bytes: &[u8]) -> Result<(String, Vec<u8>), ShimError> {
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        ShimError::Invalid(format!("runtime options do not decode: {e}"))
    };
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), Vec::new());
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match tag >> 3 {
            2 if tag & 7 == 2 => path = input.read_string().map_err(bad)?,
            3 if tag & 7 == 2 => body = input.read_bytes().map_err(bad)?,
            _ => {
                let wire = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
                    .ok_or_else(|| ShimError::Invalid("runtime options: bad wire type".into()))?;
                input.skip_field(wire).map_err(bad)?;
            }
        }
    }
    Ok((path, body))
}

/// Parses `key = value` lines (`#` comments, blank lines).
pub fn parse_text(text: &str, origin: &str) -> Result<Options, ShimError> {
    let mut opts = Options::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ShimError::Invalid(format!(
                "runtime options {origin}:{}: expected key = value, got {line:?}",
                n + 1
            )));
        };
        let value = value.trim().trim_matches('"');
        let path = || -> Result<PathBuf, ShimError> {
            let p = PathBuf::from(value);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ShimError::Invalid(format!(
                    "runtime options {origin}:{}: {value}: no such file",
                    n + 1
                )))
            }
        };
        match key.trim() {
            "kernel" => opts.kernel = Some(path()?),
            "agent" => opts.agent = Some(path()?),
            other => {
                return Err(ShimError::Invalid(format!(
                    "unknown runtime option {other:?} ({origin}:{}): hvlite knows kernel, agent",
                    n + 1
                )));
            }
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_options(path: &str) -> Any {
        // Field 2 (config_path), length-delimited.
        let mut value = vec![0x12, path.len() as u8];
        value.extend_from_slice(path.as_bytes());
        Any {
            type_url: RUNTIME_OPTIONS.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn options_from_a_config_file() {
        assert_eq!(parse(None).unwrap(), Options::default());
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"x").unwrap();
        let cfg = dir.path().join("hvlite.toml");
        std::fs::write(
            &cfg,
            format!("# hvlite\nkernel = \"{}\"\n", kernel.display()),
        )
        .unwrap();
        let opts = parse(Some(&runtime_options(cfg.to_str().unwrap()))).unwrap();
        assert_eq!(opts.kernel.as_deref(), Some(kernel.as_path()));
        std::fs::write(&cfg, "bogus = 1\n").unwrap();
        let e = parse(Some(&runtime_options(cfg.to_str().unwrap()))).unwrap_err();
        assert!(
            e.to_string().contains("unknown runtime option \"bogus\""),
            "{e}"
        );
        let e = parse(Some(&runtime_options("/nonexistent.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent.toml"), "{e}");
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        assert!(parse(Some(&other)).is_err());
        assert!(parse_text("kernel /x", "f").is_err());
        assert!(parse_text("agent = /nonexistent", "f").is_err());
    }
}
