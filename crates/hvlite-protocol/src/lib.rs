//! The contract between hvlite on the host and `hvlite-init` in the guest: the agent's wire
//! protocol and boot options ([`agent`]), the init command's encoding and exit statuses
//! ([`initcmd`]), and the switch both sides' tests obey ([`test_env`]). Both sides build
//! this crate; it depends on nothing of the host stack.

pub mod agent;
pub mod initcmd;
pub mod test_env;
