//! The container process's options as the command line gives them (`--env`, `--workdir`,
//! `--user`), parsed and checked before anything starts, and turned into the
//! [`ProcessSpec`] the guest agent runs.

use crate::agent::protocol::{ProcessSpec, User};

/// The search path a container gets unless `--env PATH=...` says otherwise (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `--env` option: `KEY=VALUE`, or `KEY` alone to pass the host's value on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub key: String,
    /// Its value; `None` takes the host's (and drops the variable if the host has none).
    pub value: Option<String>,
}

impl std::str::FromStr for EnvVar {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        if key.is_empty() {
            return Err(format!(
                "{s:?}: the variable name is empty (expected KEY=VALUE)"
            ));
        }
        if key.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(format!("{s:?}: contains a NUL byte"));
        }
        Ok(Self {
            key: key.to_string(),
            value,
        })
    }
}

/// `--user UID[:GID]` (numeric ids, as in an OCI process's `user`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Group id (default 0, as `docker run --user UID` does when the image has no entry).
    pub gid: u32,
}

impl std::str::FromStr for UserSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = |part: &str, what: &str| {
            part.parse::<u32>()
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| format!("{s:?}: the {what} must be a number below 4294967295"))
        };
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (id(u, "user id")?, id(g, "group id")?),
            None => (id(s, "user id")?, 0),
        };
        Ok(Self { uid, gid })
    }
}

/// `--workdir`: an absolute path without NUL bytes.
pub fn parse_workdir(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    Ok(s.to_string())
}

/// Everything the command line says about the container's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessOptions {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `--env`, in order (later ones win).
    pub env: Vec<EnvVar>,
    /// `--workdir` (default `/`).
    pub workdir: Option<String>,
    /// `--user` (default root).
    pub user: Option<UserSpec>,
    /// `-i`: forward hvlite's stdin.
    pub stdin: bool,
}

impl ProcessOptions {
    /// The spec for the agent; `host_env` looks up host variables for `--env KEY`.
    pub fn to_spec(&self, host_env: impl Fn(&str) -> Option<String>) -> ProcessSpec {
        let user = self.user.unwrap_or(UserSpec { uid: 0, gid: 0 });
        let home = if user.uid == 0 { "/root" } else { "/" };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), home.into()),
        ];
        for var in &self.env {
            let value = match &var.value {
                Some(v) => Some(v.clone()),
                None => host_env(&var.key),
            };
            env.retain(|(k, _)| k != &var.key);
            if let Some(v) = value {
                env.push((var.key.clone(), v));
            }
        }
        ProcessSpec {
            args: self.args.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: self.workdir.clone().unwrap_or_else(|| "/".into()),
            user: User {
                uid: user.uid,
                gid: user.gid,
                additional_gids: Vec::new(),
            },
            terminal: false,
            console_size: None,
            stdin: self.stdin,
            rlimits: Vec::new(),
            no_new_privileges: false,
            capabilities: None,
            container: None,
            guest_sync: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_options() {
        let e: EnvVar = "A=1=2".parse().unwrap();
        assert_eq!((e.key.as_str(), e.value.as_deref()), ("A", Some("1=2")));
        let e: EnvVar = "B=".parse().unwrap();
        assert_eq!(e.value.as_deref(), Some(""));
        let e: EnvVar = "HOSTVAR".parse().unwrap();
        assert_eq!(e.value, None);
        assert!("=x".parse::<EnvVar>().is_err());
        assert!("".parse::<EnvVar>().is_err());
        assert!("A=\0".parse::<EnvVar>().is_err());
    }

    #[test]
    fn user_options() {
        assert_eq!(
            "1000".parse::<UserSpec>(),
            Ok(UserSpec { uid: 1000, gid: 0 })
        );
        assert_eq!(
            "1000:100".parse::<UserSpec>(),
            Ok(UserSpec {
                uid: 1000,
                gid: 100
            })
        );
        for bad in ["", "x", "1:", ":1", "-1", "4294967295", "1:2:3", "root"] {
            assert!(bad.parse::<UserSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn workdir_must_be_absolute() {
        assert_eq!(parse_workdir("/srv"), Ok("/srv".into()));
        assert!(parse_workdir("srv").is_err());
        assert!(parse_workdir("").is_err());
    }

    #[test]
    fn spec_has_defaults_and_overrides() {
        let opts = ProcessOptions {
            args: vec!["env".into()],
            env: vec![
                "PATH=/bin".parse().unwrap(),
                "A=1".parse().unwrap(),
                "FROM_HOST".parse().unwrap(),
                "UNSET_ON_HOST".parse().unwrap(),
                "A=2".parse().unwrap(),
            ],
            workdir: Some("/tmp".into()),
            user: Some(UserSpec { uid: 7, gid: 8 }),
            stdin: true,
        };
        let spec = opts.to_spec(|k| (k == "FROM_HOST").then(|| "h".to_string()));
        assert_eq!(spec.env, ["HOME=/", "PATH=/bin", "FROM_HOST=h", "A=2"]);
        assert_eq!(spec.cwd, "/tmp");
        assert_eq!((spec.user.uid, spec.user.gid), (7, 8));
        assert!(spec.stdin && !spec.terminal);
        assert!(spec.validate().is_ok());

        let plain = ProcessOptions {
            args: vec!["true".into()],
            env: vec![],
            workdir: None,
            user: None,
            stdin: false,
        }
        .to_spec(|_| None);
        assert_eq!(
            plain.env,
            [format!("PATH={DEFAULT_PATH}"), "HOME=/root".into()]
        );
        assert_eq!(plain.cwd, "/");
        assert_eq!(plain.user, User::default());
    }
}
