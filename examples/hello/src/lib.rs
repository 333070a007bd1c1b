//! The quickstart function: a `wasi:http` component that greets.
//!
//! `GET /hello` answers "Hello, world!"; `GET /hello/{name}` greets `name`
//! (a route parameter). The greeting word comes from the GREETING variable
//! granted in gale.toml. What it prints shows in `gale logs hello`.

use gale_sdk::http::{Handler, Request, Response};

struct Hello;

impl Handler for Hello {
    fn handle(request: Request) -> Response {
        let name = request.param("name").unwrap_or_else(|| "world".into());
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        println!("greeting {name}");
        Response::text(200, format!("{greeting}, {name}!\n"))
    }
}

gale_sdk::http_handler!(Hello);
