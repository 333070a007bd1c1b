//! Functions: `ls`, `describe`, `versions`, `rollback`, `rm`, `invoke`.
//!
//! `gale invoke` exits 0 only when the function answered 2xx, so a script
//! can tell a refused or failed request from a good one; the answer is
//! printed either way (to stderr in text mode, as JSON to stdout with
//! `--output json`).

use super::{Ctx, read_arg};
use crate::Exit;
use crate::cli::{ClientCommand, Format};
use crate::client::Refused;
use crate::output;
use anyhow::{Result, anyhow, bail};
use gale_core::api::{FunctionInfo, InvokeRequest, InvokeResponse, RollbackRequest, VersionInfo};
use reqwest::StatusCode;

/// Largest JSON body the admin API takes (`MAX_BODY` in the node's
/// `control/admin.rs`); an invoke's body travels inside one.
pub const ADMIN_MAX_BODY: usize = 8 << 20;

/// Above this, a connection that breaks while the request is sent is most
/// likely the node refusing the size without reading the rest.
const LARGE: usize = 1 << 20;

pub async fn run(ctx: &Ctx, command: ClientCommand) -> Result<()> {
    let format = ctx.format();
    match command {
        ClientCommand::Ls => {
            let functions: Vec<FunctionInfo> = ctx.client()?.get("/v1/functions").await?;
            output::print(format, &functions, output::function_table)
        }
        ClientCommand::Describe { function } => {
            let info: FunctionInfo = ctx.client()?.get(&format!("/v1/functions/{function}")).await?;
            output::print(format, &info, output::describe)
        }
        ClientCommand::Versions { function } => {
            let versions: Vec<VersionInfo> = ctx
                .client()?
                .get(&format!("/v1/functions/{function}/versions"))
                .await?;
            output::print(format, &versions, output::version_table)
        }
        ClientCommand::Rollback { function, version } => {
            let info: FunctionInfo = ctx
                .client()?
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/functions/{function}/rollback"),
                    &RollbackRequest { version },
                )
                .await?;
            output::print(format, &info, |i| {
                format!("{} now serves version {}\n", i.name, i.version)
            })
        }
        ClientCommand::Rm { function } => {
            ctx.client()?.delete(&format!("/v1/functions/{function}")).await?;
            output::print(format, &serde_json::json!({ "removed": function }), |_| {
                format!("removed {function}\n")
            })
        }
        ClientCommand::Invoke {
            function,
            data,
            method,
            path,
            headers,
        } => {
            let body = match data {
                Some(d) => read_arg(
                    d,
                    "`gale invoke` sends the body as text inside a JSON request; send binary bodies to the function's route on the gateway (curl --data-binary @FILE http://127.0.0.1:8080/ROUTE)",
                )?,
                None => String::new(),
            };
            let mut header_map = std::collections::BTreeMap::new();
            for h in headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("header {h:?} must look like `NAME: VALUE`"))?;
                header_map.insert(k.trim().to_string(), v.trim().to_string());
            }
            let request = InvokeRequest {
                method,
                path: Some(path),
                headers: header_map,
                body,
            };
            invoke(ctx, &function, &request).await
        }
        _ => unreachable!("not a functions command"),
    }
}

async fn invoke(ctx: &Ctx, function: &str, request: &InvokeRequest) -> Result<()> {
    let json = serde_json::to_vec(request)?;
    if json.len() > ADMIN_MAX_BODY {
        bail!(too_large(json.len()));
    }
    let client = ctx.client()?;
    let size = json.len();
    let sent = client
        .post_raw(
            &format!("/v1/functions/{function}/invoke"),
            "application/json",
            json,
        )
        .await;
    let answer = match sent {
        // The node refused the size and closed the connection unread:
        // what the socket says (a broken pipe, a reset) is beside the point.
        Err(e) if size > LARGE && !e.is_connect() => bail!(
            "{}\n  (the node closed the connection while the request was sent)",
            too_large(size)
        ),
        Ok(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => bail!(too_large(size)),
        sent => client.check(sent).await?,
    };
    let response: InvokeResponse = answer.json().await?;
    let ok = (200..300).contains(&response.status);
    match ctx.format() {
        Format::Json => output::print(Format::Json, &response, |_| String::new())?,
        Format::Text if ok => {
            let mut body = response.body.clone();
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
            output::print(Format::Text, &response, |_| body)?;
        }
        Format::Text => eprintln!("{}", failed_answer(function, &response)),
    }
    if ok { Ok(()) } else { Err(Exit(1).into()) }
}

/// A function's non-2xx answer for stderr: status, request id, then Gale's
/// error (code, message, hint) when the answer is one, else the body.
fn failed_answer(function: &str, r: &InvokeResponse) -> String {
    let reason = StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "error: {function} answered {} {reason} (request {})",
        r.status, r.request_id
    );
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match Refused::from_answer(status, &r.body) {
        Refused {
            code: Some(code),
            message,
            hint,
            ..
        } => {
            out.push_str(&format!("\n  {code}: {message}"));
            if let Some(hint) = hint {
                out.push_str(&format!("\n  hint: {hint}"));
            }
        }
        _ if r.body.is_empty() => {}
        _ => {
            out.push('\n');
            out.push_str(r.body.trim_end());
        }
    }
    out
}

fn too_large(bytes: usize) -> String {
    format!(
        "error[payload_too_large]: the request is {:.1} MiB; `gale invoke` sends the body inside a JSON request to the admin API, which takes at most {} MiB (a limit that cannot be raised)\n  hint: send large bodies to the function's route on the gateway instead, e.g. curl --data-binary @FILE http://127.0.0.1:8080/ROUTE (up to the function's max_body, default 6 MiB)",
        bytes as f64 / (1 << 20) as f64,
        ADMIN_MAX_BODY >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> InvokeResponse {
        InvokeResponse {
            status,
            headers: Default::default(),
            body: body.into(),
            request_id: "r1".into(),
        }
    }

    #[test]
    fn failed_answers_say_status_and_error() {
        let e = failed_answer(
            "f",
            &answer(
                413,
                r#"{"error":{"code":"body_too_large","message":"the body is larger than 1 KiB","hint":"send less"}}"#,
            ),
        );
        assert!(
            e.starts_with("error: f answered 413 Payload Too Large (request r1)"),
            "{e}"
        );
        assert!(e.contains("body_too_large: the body is larger than 1 KiB"), "{e}");
        assert!(e.contains("hint: send less"), "{e}");
        let e = failed_answer("f", &answer(404, "no such thing\n"));
        assert!(e.ends_with("(request r1)\nno such thing"), "{e}");
    }
}
