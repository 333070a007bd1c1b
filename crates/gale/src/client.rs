//! A small client of the admin API (and, for publish tokens, the gateway).
//!
//! Its errors aim at the mistakes people make when pointing the CLI at a
//! node: a `--server` without a scheme (taken as `http://`), one that
//! names the gateway instead of the admin API, or something that is not a
//! Gale node at all. Each gets a sentence that says which it is and what
//! to pass instead, not the HTTP library's wording.

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, Response, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

/// A refusal from the node: its status and, when it sent Gale's error shape,
/// the code, message and hint (codes are kept as text: the gateway's own,
/// like `route_not_found`, are not in `gale_core::Code`).
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "error[{code}]: {}", self.message)?,
            None => write!(f, "error: the node answered {}: {}", self.status, self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// Reads Gale's `{"error": {"code", "message", "hint"}}`, or keeps the text.
    pub fn from_answer(status: StatusCode, text: &str) -> Refused {
        let body: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let field = |name: &str| body["error"][name].as_str().map(str::to_string);
        match (field("code"), field("message")) {
            (Some(code), Some(message)) => Refused {
                status,
                code: Some(code),
                message,
                hint: field("hint"),
            },
            _ => Refused {
                status,
                code: None,
                message: text.trim().chars().take(500).collect(),
                hint: None,
            },
        }
    }
}

/// `--server` or `--gateway` as a base URL. A bare `HOST:PORT` (which a URL
/// parser reads as a URL of scheme `HOST`) is taken as `http://HOST:PORT`.
pub fn base_url(flag: &str, value: &str) -> Result<String> {
    let value = value.trim().trim_end_matches('/');
    let url = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| anyhow!("--{flag} {value:?} is not a URL like http://127.0.0.1:8081 ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!(
            "--{flag} {value:?} has the scheme `{}`; it needs a URL like http://127.0.0.1:8081",
            parsed.scheme()
        );
    }
    Ok(url)
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Whether `base` is (meant to be) the admin API; else the gateway.
    admin: bool,
}

impl Client {
    /// A client of the admin API at `base` (a URL from [`base_url`]).
    pub fn new(base: &str, token: String) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token,
            admin: true,
        }
    }

    /// A client of the gateway at `base`, for its `/_gale/` endpoints.
    pub fn gateway(base: &str, token: String) -> Client {
        Client {
            admin: false,
            ..Client::new(base, token)
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// The answer if it is a success, else an error that says what went wrong.
    pub async fn check(&self, response: reqwest::Result<Response>) -> Result<Response> {
        let response = response.map_err(|e| {
            let (what, flag) = if self.admin {
                ("admin API", "--server (or GALE_SERVER)")
            } else {
                ("gateway", "--gateway (or GALE_GATEWAY)")
            };
            anyhow!(
                "cannot reach the Gale node at {}: {}\n  hint: is `gale serve` running? Set {flag} to its {what}",
                self.base,
                error_chain(&e)
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refusal(response).await)
    }

    /// What an unsuccessful answer means: the gateway or something else
    /// answering in the admin API's place, or the node's refusal ([`Refused`]).
    async fn refusal(&self, response: Response) -> anyhow::Error {
        let status = response.status();
        let from_gateway = response.headers().contains_key("x-gale-request-id");
        let text = response.text().await.unwrap_or_default();
        let refused = Refused::from_answer(status, &text);
        if !self.admin {
            return refused.into();
        }
        if status == StatusCode::NOT_FOUND
            && refused.code.as_deref() == Some("route_not_found")
            && from_gateway
        {
            return anyhow!(
                "{} is a Gale gateway, not the admin API\n  hint: the admin API listens on the node's --admin-listen address (default 127.0.0.1:8081); pass that as --server (or GALE_SERVER)",
                self.base
            );
        }
        if refused.code.is_none() && !self.is_admin_api().await {
            return anyhow!(
                "{} answered {status} and is not a Gale admin API (GET /v1/health does not answer as one)\n  hint: pass the node's admin API as --server (or GALE_SERVER); `gale serve` prints it at start (\"admin API  http://...\")",
                self.base
            );
        }
        refused.into()
    }

    /// Whether `base` answers `GET /v1/health` as the admin API does.
    async fn is_admin_api(&self) -> bool {
        let Ok(r) = self.http.get(format!("{}/v1/health", self.base)).send().await else {
            return false;
        };
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        body["status"] == "ok"
    }

    async fn json<T: DeserializeOwned>(&self, r: Response) -> Result<T> {
        let text = r
            .text()
            .await
            .context("the answer could not be read to its end")?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} answered something other than what the admin API answers; is it a Gale node's admin API?",
                self.base
            )
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.check(self.request(Method::GET, path).send().await).await?;
        self.json(r).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let r = self
            .check(self.request(method, path).json(body).send().await)
            .await?;
        self.json(r).await
    }

    /// POSTs a body of the given content type; the answer as sent.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<Response> {
        self.request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
    }

    /// POSTs a body of the given content type.
    pub async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<T> {
        let r = self.check(self.post_raw(path, content_type, body).await).await?;
        self.json(r).await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.check(self.request(Method::DELETE, path).send().await)
            .await?;
        Ok(())
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        let r = self.check(self.request(Method::GET, path).send().await).await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if e.downcast_ref::<Refused>()
                    .is_some_and(|r| r.status == StatusCode::NOT_FOUND) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn put_bytes(&self, path: &str, data: Vec<u8>) -> Result<()> {
        self.check(self.request(Method::PUT, path).body(data).send().await)
            .await?;
        Ok(())
    }
}

/// An error and its causes on one line ("error sending request: connection
/// refused"), as reqwest's own Display names only the outermost.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_and_port_is_taken_as_http() {
        assert_eq!(
            base_url("server", "localhost:18081").unwrap(),
            "http://localhost:18081"
        );
        assert_eq!(
            base_url("server", "127.0.0.1:8081/").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            base_url("server", "https://gale.example").unwrap(),
            "https://gale.example"
        );
        let e = base_url("server", "ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("scheme `ftp`"), "{e}");
    }

    #[test]
    fn refusals_keep_codes_the_cli_does_not_know() {
        let r = Refused::from_answer(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"route_not_found","message":"no route matches this path"}}"#,
        );
        assert_eq!(r.code.as_deref(), Some("route_not_found"));
        let r = Refused::from_answer(StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded");
        assert_eq!(r.code, None);
        assert!(r.to_string().contains("413"), "{r}");
    }
}
