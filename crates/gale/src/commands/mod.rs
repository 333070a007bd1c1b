//! The commands, by area: [`node`] runs one (`serve`, `up`),
//! [`functions`] and [`events`] are clients of its admin API, [`logs`]
//! reads invocation logs, [`buckets`] manages the S3 API's buckets and
//! keys, [`meta`] is about `gale` itself.

mod buckets;
mod events;
mod functions;
mod logs;
mod meta;
mod node;

use crate::cli::{ClientArgs, ClientCommand, Command, Format, Parsed};
use crate::client::{Client, base_url};
use anyhow::{Context, Result, anyhow, bail};

pub async fn run(parsed: Parsed) -> Result<()> {
    match parsed.command {
        Command::Serve(args) => node::serve(args).await,
        Command::Up { dir, serve, output } => node::up(dir, serve, output).await,
        Command::Version { output } => meta::version(output),
        Command::Completions { shell } => meta::completions(shell),
        Command::Client(command) => {
            let args = parsed.client.expect("client commands have client flags");
            client_command(Ctx { args }, command).await
        }
    }
}

/// What every client command starts from: its flags.
pub struct Ctx {
    pub args: ClientArgs,
}

impl Ctx {
    pub fn format(&self) -> Format {
        self.args.output
    }

    /// `--token`, else the data directory's `token` file.
    pub fn token(&self) -> Result<String> {
        if let Some(t) = &self.args.token {
            return Ok(t.clone());
        }
        let path = self.args.data_dir.join("token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                anyhow!(
                    "no admin token: {} is not readable ({e})\n  hint: set GALE_TOKEN (or --token), or point --data-dir at the node's data directory",
                    path.display()
                )
            })
    }

    /// A client of the admin API at `--server`.
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(
            &base_url("server", &self.args.server)?,
            self.token()?,
        ))
    }
}

async fn client_command(ctx: Ctx, command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Deploy { file } => crate::deploy::deploy(|| ctx.client(), &file, ctx.format()).await,
        ClientCommand::Ls
        | ClientCommand::Describe { .. }
        | ClientCommand::Versions { .. }
        | ClientCommand::Rollback { .. }
        | ClientCommand::Rm { .. }
        | ClientCommand::Invoke { .. } => functions::run(&ctx, command).await,
        ClientCommand::Logs {
            function,
            app,
            follow,
            limit,
            since,
        } => {
            let since_ms = since.map(|s| unix_ms("since", &s)).transpose()?;
            logs::run(&ctx, function, app, follow, limit, since_ms).await
        }
        ClientCommand::Buckets { action } => buckets::buckets(&ctx, action).await,
        ClientCommand::Keys { action } => buckets::keys(&ctx, action).await,
        _ => events::run(&ctx, command).await,
    }
}

/// A time given as an age (`15m`, `2h`) or an RFC 3339 time, in Unix
/// milliseconds (`--from` of replay, `--since` of logs).
pub fn unix_ms(flag: &str, value: &str) -> Result<u64> {
    let at = match humantime::parse_duration(value) {
        Ok(age) => std::time::SystemTime::now() - age,
        Err(_) => humantime::parse_rfc3339_weak(value).map_err(|e| {
            anyhow!("--{flag} {value:?} is neither an age like \"15m\" nor a time like \"2026-11-30T07:00:00Z\": {e}")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// A command-line value, or with `@FILE` the file's contents, which must
/// be UTF-8 text (`why` says why, for the message when it is not).
pub fn read_arg(value: String, why: &str) -> Result<String> {
    let Some(file) = value.strip_prefix('@') else {
        return Ok(value);
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => bail!(
            "{file} is not UTF-8 text (byte {} is not): {why}",
            e.utf8_error().valid_up_to()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_be_text() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [b'o', b'k', 0xff, 0xfe]).unwrap();
        let e = read_arg(format!("@{}", bin.display()), "why")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not UTF-8 text (byte 2 is not): why"), "{e}");
        let txt = dir.path().join("txt");
        std::fs::write(&txt, "héllo").unwrap();
        assert_eq!(read_arg(format!("@{}", txt.display()), "").unwrap(), "héllo");
        assert_eq!(read_arg("plain".into(), "").unwrap(), "plain");
    }

    #[test]
    fn times_are_ages_or_rfc3339() {
        assert_eq!(
            unix_ms("since", "2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ago = unix_ms("since", "15m").unwrap();
        assert!(now - ago >= 15 * 60_000 && now - ago < 16 * 60_000);
        assert!(unix_ms("since", "yesterday").is_err());
    }
}
