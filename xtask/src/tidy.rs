//! Tree hygiene checks that run as plain `#[test]`s, so `cargo test --workspace` (and therefore
//! `cargo xtask test` and CI) keeps the tree tidy without a separate step to forget.
//!
//! The model is rust-analyzer's `xtask/src/tidy.rs`. Each check collects every offender before
//! failing, so one run lists everything to fix.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{package_manifests, relative, workspace_root};

/// Every published crate and every example explains itself and records its changes.
#[test]
fn packages_have_readme_and_changelog() {
    let root = workspace_root();
    let mut offenders = Vec::new();
    for (dir, _) in member_manifests(&root, &["crates", "examples"]) {
        let missing: Vec<&str> = ["README.md", "CHANGELOG.md"]
            .into_iter()
            .filter(|file| !dir.join(file).is_file())
            .collect();
        if !missing.is_empty() {
            offenders.push(format!(
                "{}: missing {}",
                relative(&root, &dir),
                missing.join(", ")
            ));
        }
    }
    fail_if_any(
        &offenders,
        "every package under crates/ and examples/ needs a README.md and a CHANGELOG.md",
    );
}

/// The workspace lints (missing_docs, unreachable_pub, unsafe_code = forbid, ...) only apply to
/// packages that opt in.
#[test]
fn packages_inherit_workspace_lints() {
    let root = workspace_root();
    let mut manifests = member_manifests(&root, &["crates", "examples"]);
    for dir in ["benches", "xtask"] {
        let dir = root.join(dir);
        if let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) {
            manifests.push((dir, text));
        }
    }
    let offenders: Vec<String> = manifests
        .iter()
        .filter(|(_, text)| !inherits_workspace_lints(text))
        .map(|(dir, _)| format!("{}/Cargo.toml", relative(&root, dir)))
        .collect();
    fail_if_any(
        &offenders,
        "every package Cargo.toml needs `[lints]` followed by `workspace = true`",
    );
}

/// Debugging leftovers and placeholders never reach the main branch.
#[test]
fn no_debugging_leftovers() {
    // Spelled in pieces so this file does not match itself.
    let forbidden = [
        concat!("dbg", "!("),
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
    ];
    let root = workspace_root();
    let this_file = root.join("xtask").join("src").join("tidy.rs");
    let mut files = Vec::new();
    for dir in ["crates", "examples", "benches", "xtask"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();

    let mut offenders = Vec::new();
    for file in files.iter().filter(|file| **file != this_file) {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            for pattern in forbidden.iter().filter(|pattern| line.contains(**pattern)) {
                offenders.push(format!(
                    "{}:{}: {pattern}",
                    relative(&root, file),
                    number + 1
                ));
            }
        }
    }
    fail_if_any(
        &offenders,
        concat!(
            "remove `dbg",
            "!`, `todo",
            "!` and `unimplemented",
            "!` from the sources"
        ),
    );
}

/// One MSRV for the workspace: every crate and example inherits `[workspace.package]`'s.
#[test]
fn crates_inherit_the_workspace_rust_version() {
    let root = workspace_root();
    let offenders: Vec<String> = member_manifests(&root, &["crates", "examples"])
        .iter()
        .filter(|(_, text)| {
            !text.lines().any(|line| {
                line.split_whitespace().collect::<String>() == "rust-version.workspace=true"
            })
        })
        .map(|(dir, _)| format!("{}/Cargo.toml", relative(&root, dir)))
        .collect();
    fail_if_any(
        &offenders,
        "every package under crates/ and examples/ needs `rust-version.workspace = true`",
    );
}

/// `crates/<package name>`: a crate is found where its name says.
#[test]
fn crates_live_in_a_directory_named_for_the_package() {
    let root = workspace_root();
    let offenders: Vec<String> = member_manifests(&root, &["crates"])
        .iter()
        .filter(|(dir, text)| {
            let name = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("name"))
                .and_then(|rest| rest.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned());
            name.as_deref() != dir.file_name().and_then(|n| n.to_str())
        })
        .map(|(dir, _)| relative(&root, dir))
        .collect();
    fail_if_any(&offenders, "every crate lives in crates/<its package name>");
}

/// The workspace's own crates are named once, in `[workspace.dependencies]`: no package reaches
/// another by a relative `path`.
#[test]
fn workspace_crates_are_workspace_dependencies() {
    let root = workspace_root();
    let mut manifests = member_manifests(&root, &["crates", "examples"]);
    for dir in ["benches", "xtask"] {
        let dir = root.join(dir);
        if let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) {
            manifests.push((dir, text));
        }
    }
    let offenders: Vec<String> = manifests
        .iter()
        .filter(|(_, text)| {
            text.lines()
                .any(|line| line.starts_with("degrade") && line.contains("path ="))
        })
        .map(|(dir, _)| format!("{}/Cargo.toml", relative(&root, dir)))
        .collect();
    fail_if_any(
        &offenders,
        "depend on the workspace's crates with `{ workspace = true }`",
    );
}

/// Packages one level below each of `parents` (a missing parent contributes nothing).
fn member_manifests(root: &Path, parents: &[&str]) -> Vec<(PathBuf, String)> {
    parents
        .iter()
        .flat_map(|parent| package_manifests(&root.join(parent)))
        .collect()
}

/// `[lints]` whose first setting is `workspace = true`, or the dotted `lints.workspace = true`.
fn inherits_workspace_lints(text: &str) -> bool {
    let compact: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .map(|line| line.split_whitespace().collect::<String>())
        .filter(|line| !line.is_empty())
        .collect();
    compact.iter().any(|line| line == "lints.workspace=true")
        || compact
            .windows(2)
            .any(|pair| pair[0] == "[lints]" && pair[1] == "workspace=true")
}

/// Every `.rs` file below `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if file_type.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn fail_if_any(offenders: &[String], rule: &str) {
    assert!(
        offenders.is_empty(),
        "tidy: {rule}; offending paths:\n  {}\n",
        offenders.join("\n  ")
    );
}
