//! `hvlite --help` lists every subcommand with an example, each subcommand's help has
//! one, and the completion and man-page generators that scripts/setup.sh installs work.

mod common;

use common::*;

fn stdout_of(args: &[&str]) -> String {
    let out = run_hvlite(args);
    assert!(out.status.success(), "hvlite {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands listed under `Commands:` in `hvlite --help` (clap's `help` aside).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_has_an_example_in_both_helps() {
    let top = stdout_of(&["--help"]);
    let subs = subcommands(&top);
    for expected in ["run", "completions", "man"] {
        assert!(subs.iter().any(|s| s == expected), "{expected}: {top}");
    }
    for sub in &subs {
        let example = format!("  hvlite {sub} ");
        assert!(
            top.contains(&example),
            "no {example:?} in hvlite --help:\n{top}"
        );
        let own = stdout_of(&[sub, "--help"]);
        assert!(
            own.contains("Example") && own.contains(&example),
            "no example in hvlite {sub} --help:\n{own}"
        );
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("complete -F _hvlite"), "{bash}");
    assert!(bash.contains("--rootfs"), "{bash}");
    let dir = scratch("man");
    let out = run_hvlite(&["man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in ["hvlite.1", "hvlite-run.1"] {
        let text = std::fs::read_to_string(dir.join(page)).expect(page);
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let out = run_hvlite(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
}
