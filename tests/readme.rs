//! The README cannot rot: it starts with the two commands CI and users run, every relative
//! link in it resolves, and the blocks marked `<!-- test -->` run as a fresh user would run
//! them after `scripts/setup.sh`: a home directory with the installed layout, hvlite on
//! PATH, no HVLITE_* variables. Each `# prints: TEXT` line of a block must appear in what
//! the block printed (stdout and stderr).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::linux::{agent, initrd, kernel, rootfs_dir};
use common::*;

const MARK: &str = "<!-- test -->";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

/// The code blocks that follow a [`MARK`] line.
fn test_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARK {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "{MARK} must precede a code block");
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

/// The targets of the Markdown links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn starts_with_the_two_commands() {
    let text = readme();
    let first: Vec<&str> = text.lines().take(4).collect();
    assert_eq!(
        first,
        ["```", "bash scripts/demo.sh", "bash scripts/test.sh", "```"]
    );
    let n = text.lines().count();
    assert!(
        n <= 160,
        "the README is for users: keep it short ({n} lines)"
    );
}

#[test]
fn every_relative_link_resolves() {
    let mut docs = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("read doc");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let path = doc.parent().expect("doc dir").join(file);
            assert!(path.exists(), "{}: broken link {target}", doc.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links found");
}

/// A home directory laid out as scripts/setup.sh leaves it for a user who is not root.
fn installed_home() -> Scratch {
    let home = scratch("readme-home");
    let bin = home.join(".local/bin");
    let data = home.join(".local/share/hvlite");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(hvlite(), bin.join("hvlite")).expect("install hvlite");
    std::os::unix::fs::symlink(kernel(), data.join("vmlinux")).unwrap();
    std::fs::copy(agent(), data.join("hvlite-agent")).expect("install the agent");
    std::os::unix::fs::symlink(rootfs_dir(), data.join("rootfs")).unwrap();
    std::os::unix::fs::symlink(initrd(), data.join("initramfs.cpio")).unwrap();
    home
}

#[test]
fn the_marked_examples_run_as_a_fresh_user_would() {
    let blocks = test_blocks(&readme());
    assert!(blocks.len() >= 3, "too few tested examples: {blocks:?}");
    if !kvm_available("the_marked_examples_run_as_a_fresh_user_would") {
        return;
    }
    let home = installed_home();
    let work = scratch("readme-work");
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        home.join(".local/bin").display()
    );
    for block in &blocks {
        let started = std::time::Instant::now();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(&work)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", &path)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "README block ran {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            block.lines().next().unwrap_or_default()
        );
        assert!(out.status.success(), "block:\n{block}\nprinted:\n{printed}");
        let wants: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("# prints: "))
            .collect();
        assert!(
            !wants.is_empty(),
            "a tested block says what it prints:\n{block}"
        );
        for want in wants {
            assert!(
                printed.contains(want),
                "block:\n{block}\nshould print {want:?}; printed:\n{printed}"
            );
        }
    }
}
