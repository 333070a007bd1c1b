//! Who may use the Lambda Invoke API: AWS clients sign every request with
//! Signature Version 4, so Gale checks that signature with the node's admin
//! token as the secret access key (the access key id may be anything, say
//! `gale`). A request may also carry the token itself as
//! `Authorization: Bearer ...`, like the rest of Gale's API.

use crate::auth::{Grant, Tokens, constant_time_eq};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far a signature's time may be from the node's clock, as AWS allows.
const SKEW_SECS: i64 = 15 * 60;

/// Checks the request's credentials; the error says what was wrong.
pub fn authorize(tokens: &Tokens, parts: &http::request::Parts, body: &[u8]) -> Result<(), String> {
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("the request is not signed: configure the AWS client with the node's admin token as its secret access key")?;
    if auth.starts_with("Bearer ") {
        return match tokens.grant(&parts.headers) {
            Some(Grant::Admin) => Ok(()),
            _ => Err("the bearer token is not the node's admin token".into()),
        };
    }
    let signed = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("only AWS4-HMAC-SHA256 signatures are accepted")?;
    let field = |name: &str| {
        signed
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .ok_or(format!("the Authorization header has no {name}"))
    };
    let credential = field("Credential")?;
    let signed_headers = field("SignedHeaders")?;
    let signature = field("Signature")?;
    // Credential = <key id>/<date>/<region>/<service>/aws4_request
    let scope: Vec<&str> = credential.splitn(2, '/').collect();
    let scope = scope.get(1).ok_or("the Credential has no scope")?;
    let amz_date = header(parts, "x-amz-date").ok_or("the request has no X-Amz-Date")?;
    let when = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &amz_date)
        .ok()
        .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .ok_or("X-Amz-Date is not a time like 20261130T120000Z")?;
    let skew = (jiff::Timestamp::now().as_second() - when.timestamp().as_second()).abs();
    if skew > SKEW_SECS {
        return Err("the signature's time is more than 15 minutes from the node's clock".into());
    }
    let payload_hash =
        header(parts, "x-amz-content-sha256").unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    let canonical = canonical_request(parts, signed_headers, &payload_hash);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{}", tokens.admin()).into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    if constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        Ok(())
    } else {
        Err(
            "the request signature does not match: the secret access key must be the node's admin token"
                .into(),
        )
    }
}

fn header(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes all but the unreserved characters (and `/` if asked).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_request(parts: &http::request::Parts, signed_headers: &str, payload_hash: &str) -> String {
    // Services other than S3 encode the (already encoded) path once more.
    let path = encode(parts.uri.path(), true);
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (encode(&decode(k), false), encode(&decode(v), false))
        })
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{}\n{path}\n{query}\n{headers}\n{signed_headers}\n{payload_hash}",
        parts.method
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "get-vanilla" case of AWS's published SigV4 test suite.
    #[test]
    fn matches_the_published_vanilla_signature() {
        let req = http::Request::get("/")
            .header("host", "example.amazonaws.com")
            .header("x-amz-date", "20150830T123600Z")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let canonical = canonical_request(&parts, "host;x-amz-date", &hex::encode(Sha256::digest(b"")));
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_vec();
        for part in ["20150830", "us-east-1", "service", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        assert_eq!(
            hex::encode(hmac(&key, string_to_sign.as_bytes())),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }
}
