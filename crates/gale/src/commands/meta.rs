//! About `gale` itself: `version`, `completions`.

use crate::cli::Format;
use crate::output;
use anyhow::Result;
use std::io::Write;

pub fn version(format: Format) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    output::print(format, &serde_json::json!({ "version": version }), |_| {
        format!("gale {version}\n")
    })
}

/// A completion script for `shell`, from the same command line `gale`
/// parses (client flags included, wherever they go).
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::cli::command(), "gale", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}
