//! Debian packages the tests need (PostgreSQL's server, Chromium and its WebDriver), installed with apt when
//! missing. One install at a time per process; across processes apt's own lock is waited for.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use nix::unistd::Uid;

use crate::error::{Error, Result};
use crate::process::run_to_completion;

/// Installs `packages` (`apt-get update`, then `apt-get install`), its output in `log`; `why` names what needs them
/// in the error.
pub fn install(packages: &[&str], why: &str, log: &Path) -> Result<()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "airq-testenv: {why}: installing the Debian packages {}",
        packages.join(" ")
    );
    let sudo: &[&str] = if Uid::effective().is_root() {
        &[]
    } else {
        &["sudo", "-n"]
    };
    // Another process (a second test binary, the runner) may be installing: wait for its lock rather than fail.
    let lock_wait = ["-o", "DPkg::Lock::Timeout=600"];
    let update: Vec<&str> = ["apt-get", "update", "-q"].into_iter().chain(lock_wait).collect();
    let install: Vec<&str> = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
        .into_iter()
        .chain(lock_wait)
        .chain(packages.iter().copied())
        .collect();
    for args in [update, install] {
        let full: Vec<&str> = sudo.iter().copied().chain(args).collect();
        let mut command = Command::new(full[0]);
        command.args(&full[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run_to_completion(command, log).map_err(|e| {
            Error::Setup(format!(
                "{why}, and installing the Debian packages {} failed: {e}",
                packages.join(" ")
            ))
        })?;
    }
    Ok(())
}
