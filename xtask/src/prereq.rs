//! The external binaries the tests need, and how `cargo xtask test` gets them.
//!
//! One table ([`PREREQUISITES`]) says which binary, who needs it and which apt package holds it.
//! When one is missing, `cargo xtask test` installs it itself where it can (running as root, or
//! with password-less `sudo -n`, on a machine with apt-get), says what it installed, and only
//! asks the user, with the exact command, when it cannot. [`decide`] is that decision, a pure
//! function of what is missing and what the machine allows, so it is tested without touching
//! the machine.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use crate::{Result, package_manifests, relative, seconds};

/// An external binary some tests need.
pub(crate) struct Prerequisite {
    pub(crate) binary: &'static str,
    /// Who needs it in this checkout; empty means not required.
    needed_by: fn(&Path) -> Vec<User>,
    /// The Debian / Ubuntu package that installs `binary`.
    apt_package: &'static str,
}

/// A package that needs a prerequisite, and why.
struct User {
    dir: String,
    package: Option<String>,
    reason: &'static str,
}

/// Binaries the test suite may need; `cargo xtask test` installs the missing ones.
pub(crate) const PREREQUISITES: &[Prerequisite] = &[Prerequisite {
    binary: "redis-server",
    needed_by: crates_with_redis_feature,
    apt_package: "redis-server",
}];

/// Crates whose Cargo.toml declares a `redis` feature: their tests start a `redis-server`.
fn crates_with_redis_feature(root: &Path) -> Vec<User> {
    package_manifests(&root.join("crates"))
        .into_iter()
        .filter_map(|(dir, text)| {
            let has_feature = text.lines().any(|line| {
                line.split_whitespace()
                    .collect::<String>()
                    .starts_with("redis=[")
            });
            has_feature.then(|| User {
                dir: relative(root, &dir),
                package: manifest_package_name(&text),
                reason: "feature redis",
            })
        })
        .collect()
}

/// The `name` in the `[package]` table, read without a TOML parser (good enough for our manifests).
fn manifest_package_name(text: &str) -> Option<String> {
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line.strip_prefix("name").map(str::trim_start)
            && let Some(value) = value.strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// What this machine lets `cargo xtask test` do about a missing binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Host {
    /// Running as root (effective uid 0).
    pub(crate) root: bool,
    /// `sudo -n true` succeeds: sudo without a password.
    pub(crate) sudo: bool,
    /// `apt-get` is on PATH.
    pub(crate) apt_get: bool,
    /// The user asked not to install anything (`--no-install`).
    pub(crate) no_install: bool,
}

/// One command line, argv style.
pub(crate) type Argv = Vec<String>;

/// What to do about the missing prerequisites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing is missing.
    Nothing,
    /// Run these commands in order (as root, or through `sudo -n`), then look again.
    Install {
        commands: Vec<Argv>,
        /// How the commands get their privileges, for the message: "as root" or "with sudo -n".
        how: &'static str,
    },
    /// We cannot install: tell the user this (it holds the exact command to run).
    Ask(String),
}

/// Decides what to do about the apt packages `missing` (those of the missing binaries) on
/// `host`. Pure: the caller probes the machine and runs the commands.
pub(crate) fn decide(missing: &[&str], host: Host) -> Action {
    if missing.is_empty() {
        return Action::Nothing;
    }
    let packages = missing.join(" ");
    let user_command = format!(
        "sudo apt-get update && sudo apt-get install -y {packages}, then run the command again"
    );
    if !host.apt_get {
        return Action::Ask(format!(
            "there is no apt-get here, so xtask cannot install them: install {packages} (or the \
             package that provides it) with this system's package manager, e.g. \
             `brew install redis` or `dnf install redis`, then run the command again"
        ));
    }
    if host.no_install {
        return Action::Ask(format!(
            "--no-install was given; install them with: {user_command}"
        ));
    }
    let (prefix, how): (&[&str], _) = if host.root {
        (&[], "as root")
    } else if host.sudo {
        (&["sudo", "-n"], "with sudo -n")
    } else {
        return Action::Ask(format!(
            "xtask installs them itself when it runs as root or `sudo -n` needs no password, \
             and neither holds here; install them with: {user_command}"
        ));
    };
    let with_prefix = |args: &[&str]| -> Argv {
        prefix
            .iter()
            .chain(args)
            .map(|word| (*word).to_owned())
            .collect()
    };
    let mut install = with_prefix(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
    ]);
    install.extend(missing.iter().map(|p| (*p).to_owned()));
    Action::Install {
        commands: vec![with_prefix(&["apt-get", "update", "-qq"]), install],
        how,
    }
}

/// A prerequisite this run needs, with who needs it.
struct Needed {
    prerequisite: &'static Prerequisite,
    needed_by: String,
}

/// Makes sure every binary the selected tests need is on PATH: installs the missing ones when
/// it can (see [`decide`]), fails with the command to run otherwise. With `-p`, only the named
/// packages' needs count.
pub(crate) fn ensure(root: &Path, packages: &[String], no_install: bool) -> Result {
    let mut missing = Vec::new();
    for needed in needed(root, packages) {
        match find_on_path(needed.prerequisite.binary) {
            Some(path) => println!(
                "==> prerequisite {} found at {} (needed by {})",
                needed.prerequisite.binary,
                path.display(),
                needed.needed_by
            ),
            None => missing.push(needed),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let listing = missing
        .iter()
        .map(|m| {
            format!(
                "{} (apt package {}) not found on PATH: needed by {}",
                m.prerequisite.binary, m.prerequisite.apt_package, m.needed_by
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ");
    let mut apt_packages: Vec<&str> = missing.iter().map(|m| m.prerequisite.apt_package).collect();
    apt_packages.sort_unstable();
    apt_packages.dedup();
    let host = probe_host(no_install);
    match decide(&apt_packages, host) {
        Action::Nothing => Ok(()),
        Action::Ask(advice) => Err(format!("missing prerequisites:\n  {listing}\n{advice}")),
        Action::Install { commands, how } => {
            println!("==> missing prerequisites:\n  {listing}");
            println!("==> installing {} {how}", apt_packages.join(" "));
            let started = Instant::now();
            for command in &commands {
                run(command)?;
            }
            let mut still_missing = Vec::new();
            for m in &missing {
                match find_on_path(m.prerequisite.binary) {
                    Some(path) => println!(
                        "==> installed {} (apt package {}): {}",
                        m.prerequisite.binary,
                        m.prerequisite.apt_package,
                        path.display()
                    ),
                    None => still_missing.push(m.prerequisite.binary),
                }
            }
            if still_missing.is_empty() {
                println!("==> prerequisites installed in {}", seconds(started));
                Ok(())
            } else {
                Err(format!(
                    "installed {} but {} is still not on PATH ({}); add its directory to PATH",
                    apt_packages.join(" "),
                    still_missing.join(", "),
                    env::var("PATH").unwrap_or_default()
                ))
            }
        }
    }
}

/// The prerequisites the selected packages need (all packages when `packages` is empty).
fn needed(root: &Path, packages: &[String]) -> Vec<Needed> {
    PREREQUISITES
        .iter()
        .filter_map(|prerequisite| {
            let users: Vec<User> = (prerequisite.needed_by)(root)
                .into_iter()
                .filter(|user| {
                    packages.is_empty()
                        || user
                            .package
                            .as_ref()
                            .is_some_and(|name| packages.contains(name))
                })
                .collect();
            (!users.is_empty()).then(|| Needed {
                prerequisite,
                needed_by: users
                    .iter()
                    .map(|user| format!("{} ({})", user.dir, user.reason))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
        .collect()
}

fn probe_host(no_install: bool) -> Host {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    // Only asked when it matters: `sudo -n` fails at once instead of prompting for a password.
    let sudo = !root
        && find_on_path("sudo").is_some()
        && Command::new("sudo")
            .args(["-n", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    Host {
        root,
        sudo,
        apt_get: find_on_path("apt-get").is_some(),
        no_install,
    }
}

fn run(argv: &[String]) -> Result {
    let shown = argv.join(" ");
    println!("==> {shown}");
    let started = Instant::now();
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|err| format!("could not start `{shown}`: {err}"))?;
    if status.success() {
        println!("ok in {}", seconds(started));
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(format!("{binary}{}", env::consts::EXE_SUFFIX)))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: Host = Host {
        root: false,
        sudo: false,
        apt_get: true,
        no_install: false,
    };

    fn argv(words: &str) -> Argv {
        words.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn nothing_missing_means_nothing_to_do_whatever_the_host() {
        for root in [false, true] {
            for sudo in [false, true] {
                for apt_get in [false, true] {
                    let host = Host {
                        root,
                        sudo,
                        apt_get,
                        no_install: false,
                    };
                    assert_eq!(decide(&[], host), Action::Nothing);
                }
            }
        }
    }

    #[test]
    fn root_installs_with_apt_get_directly() {
        let host = Host {
            root: true,
            ..NOTHING
        };
        assert_eq!(
            decide(&["redis-server"], host),
            Action::Install {
                commands: vec![
                    argv("apt-get update -qq"),
                    argv(
                        "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                         --no-install-recommends redis-server"
                    ),
                ],
                how: "as root",
            }
        );
    }

    #[test]
    fn root_does_not_go_through_sudo_even_when_it_works() {
        let host = Host {
            root: true,
            sudo: true,
            ..NOTHING
        };
        let Action::Install { commands, how } = decide(&["redis-server"], host) else {
            panic!("root installs");
        };
        assert_eq!(how, "as root");
        assert!(commands.iter().all(|c| c[0] != "sudo"), "{commands:?}");
    }

    #[test]
    fn passwordless_sudo_installs_through_sudo_n() {
        let host = Host {
            sudo: true,
            ..NOTHING
        };
        assert_eq!(
            decide(&["redis-server", "other"], host),
            Action::Install {
                commands: vec![
                    argv("sudo -n apt-get update -qq"),
                    argv(
                        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                         --no-install-recommends redis-server other"
                    ),
                ],
                how: "with sudo -n",
            }
        );
    }

    #[test]
    fn without_root_or_sudo_the_user_gets_the_exact_command() {
        let Action::Ask(message) = decide(&["redis-server"], NOTHING) else {
            panic!("cannot install without privileges");
        };
        assert!(
            message.contains("sudo apt-get update && sudo apt-get install -y redis-server"),
            "{message}"
        );
    }

    #[test]
    fn without_apt_get_the_user_is_asked_even_as_root() {
        let host = Host {
            root: true,
            sudo: true,
            apt_get: false,
            no_install: false,
        };
        let Action::Ask(message) = decide(&["redis-server"], host) else {
            panic!("no apt-get, no install");
        };
        assert!(message.contains("redis-server"), "{message}");
        assert!(message.contains("package manager"), "{message}");
    }

    #[test]
    fn no_install_asks_instead_of_installing() {
        let host = Host {
            root: true,
            no_install: true,
            ..NOTHING
        };
        let Action::Ask(message) = decide(&["redis-server"], host) else {
            panic!("--no-install never installs");
        };
        assert!(
            message.contains("apt-get install -y redis-server"),
            "{message}"
        );
    }

    #[test]
    fn the_redis_feature_is_found_in_a_manifest() {
        let dir = std::env::temp_dir().join(format!("xtask-prereq-{}", std::process::id()));
        let krate = dir.join("crates").join("limiter");
        fs::create_dir_all(&krate).unwrap();
        fs::write(
            krate.join("Cargo.toml"),
            "[package]\nname = \"my-limiter\"\n\n[features]\nredis = [\"dep:redis\"]\n",
        )
        .unwrap();
        let users = crates_with_redis_feature(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].dir, "crates/limiter");
        assert_eq!(users[0].package.as_deref(), Some("my-limiter"));
    }
}
