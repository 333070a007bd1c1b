//! An HTTP function written with `gale_sdk::http`, for the tests of that
//! module: each path shows one part of the request and response API.

use gale_sdk::buckets;
use gale_sdk::http::{Handler, Request, Response};

struct Sdk;

impl Handler for Sdk {
    fn handle(request: Request) -> Response {
        let path = request.path();
        match path.rsplit('/').next().unwrap_or("") {
            // What the handler sees of the request, as JSON.
            "inspect" => {
                let method = request.method();
                let query = request.query("q");
                let header = request.header("x-test");
                let param = request.param("id");
                let path_with_query = request.path_with_query();
                let body = match request.text() {
                    Ok(b) => b,
                    Err(e) => return Response::text(400, e),
                };
                Response::json(
                    200,
                    &serde_json::json!({
                        "method": method,
                        "path": path,
                        "path_with_query": path_with_query,
                        "query": query,
                        "header": header,
                        "param": param,
                        "body": body,
                    }),
                )
            }
            "status" => Response::new(418).with_header("X-Teapot", "short and stout"),
            // A body of `n` bytes: more than one write to the stream.
            "big" => {
                let n: usize = request.query("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                Response::new(200).with_body(vec![b'x'; n])
            }
            "json" => match request.json::<serde_json::Value>() {
                Ok(v) => Response::json(200, &serde_json::json!({ "got": v })),
                Err(e) => Response::text(400, e),
            },
            "bad-header" => Response::text(200, "never sent").with_header("bad header", "x"),
            // The host frames the body itself.
            "forbidden-header" => {
                Response::text(200, "never sent").with_header("transfer-encoding", "chunked")
            }
            // A line break in a value must not start a header of its own.
            "injected-header" => Response::text(200, "never sent").with_header("x-a", "1\nx-injected: yes"),
            "panic" => panic!("the handler gave up"),
            // `gale_sdk::buckets` from an HTTP function: PUT stores the
            // body at `?bucket=&key=`, GET answers the object.
            "object" => object(request),
            other => Response::text(404, format!("no {other}\n")),
        }
    }
}

fn object(request: Request) -> Response {
    let bucket = request.query("bucket").unwrap_or_default();
    let key = request.query("key").unwrap_or_default();
    let done = match request.method().as_str() {
        "PUT" => request
            .body()
            .and_then(|body| buckets::put(&bucket, &key, &body, Some("text/plain")))
            .map(|etag| Response::text(200, etag)),
        _ => buckets::get(&bucket, &key).map(|data| match data {
            Some(data) => Response::new(200).with_body(data),
            None => Response::text(404, "no such object"),
        }),
    };
    done.unwrap_or_else(|e| Response::text(403, e))
}

gale_sdk::http_handler!(Sdk);
