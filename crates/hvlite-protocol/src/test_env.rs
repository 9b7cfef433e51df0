//! The switch the test command sets: with `HVLITE_REQUIRE_KVM=1` (scripts/test.sh, CI) a
//! test that needs something of the host (/dev/kvm, root, TAP support, mkfs.ext4, loop
//! devices) and does not find it FAILS; without the switch (a developer's machine) it is
//! skipped with a loud `SKIPPED` notice. The host's unit and integration tests and the
//! agent's tests all decide through [`check`], so they cannot disagree.

/// The environment variable of the switch; `1` turns it on.
pub const REQUIRE_ENV: &str = "HVLITE_REQUIRE_KVM";

/// Whether the switch is on.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1")
}

/// `ok` when what `test` needs is here. Otherwise panics if the switch is on, else
/// prints `SKIPPED <test>: <missing>` and returns false (the test then returns early).
pub fn check(test: &str, ok: bool, missing: &str) -> bool {
    if !ok {
        assert!(
            !required(),
            "{test}: {missing}, and {REQUIRE_ENV}=1 says this host must run it"
        );
        eprintln!("SKIPPED {test}: {missing}");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_means_run_missing_means_skip_or_fail() {
        assert!(check("t", true, "nothing"));
        if required() {
            let r = std::panic::catch_unwind(|| check("t", false, "needs a unicorn"));
            let msg = r.expect_err("must fail under the switch");
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains("needs a unicorn") && msg.contains(REQUIRE_ENV),
                "{msg}"
            );
        } else {
            assert!(!check("t", false, "needs a unicorn"));
        }
    }
}
