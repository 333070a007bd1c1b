//! The quickstart greeter written on `wstd` (an async runtime for
//! components): the `http` bench measures it beside the `gale_sdk::http`
//! version in `examples/hello`.
//!
//! `GET /hello` answers "Hello, world!"; `GET /hello/{name}` greets `name`
//! (Gale passes route parameters as `x-gale-param-<name>` headers). The
//! greeting word comes from the GREETING variable granted in gale.toml.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let name = request
        .headers()
        .get("x-gale-param-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("world")
        .to_owned();
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    println!("greeting {name}");
    Ok(Response::new(format!("{greeting}, {name}!\n").into()))
}
