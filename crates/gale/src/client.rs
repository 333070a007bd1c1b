//! A small client of the admin API.

use anyhow::{Context, Result, anyhow};
use gale_core::error::ErrorBody;
use reqwest::{Method, Response};
use serde::{Serialize, de::DeserializeOwned};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: String) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn check(&self, response: reqwest::Result<Response>) -> Result<Response> {
        let response = response.with_context(|| {
            format!(
                "cannot reach the Gale node at {}; is `gale serve` running? (set --server or GALE_SERVER)",
                self.base
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(anyhow!(body.error.render())),
            Err(_) => Err(anyhow!("the node answered {status}: {text}")),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.check(self.request(Method::GET, path).send().await).await?;
        Ok(r.json().await?)
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
        Ok(r.json().await?)
    }

    /// POSTs a body of the given content type.
    pub async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Result<T> {
        let r = self
            .check(
                self.request(Method::POST, path)
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body)
                    .send()
                    .await,
            )
            .await?;
        Ok(r.json().await?)
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.check(self.request(Method::DELETE, path).send().await)
            .await?;
        Ok(())
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        let r = self.request(Method::GET, path).send().await;
        match r {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Ok(false),
            other => self.check(other).await.map(|_| true),
        }
    }

    pub async fn put_bytes(&self, path: &str, data: Vec<u8>) -> Result<()> {
        self.check(self.request(Method::PUT, path).body(data).send().await)
            .await?;
        Ok(())
    }
}
