//! Hello over HTTP: a `wasi:http/proxy` component. Shoal serves it on each `containerPort` of
//! its pod and runs a fresh instance for every request.
//!
//! - `GET /` answers `Hello from Shoal!` and the value of `GREETING`, if set;
//! - `GET /env/NAME` answers the value of the environment variable NAME (404 when unset);
//! - `GET /outbound` tries an outbound request and answers what the host said;
//! - `GET /alloc/N` allocates N MiB before answering;
//! - `GET /loop` never answers.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("body stream");
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if let Some(name) = path.strip_prefix("/env/") {
            match std::env::var(name) {
                Ok(value) => respond(out, 200, &format!("{value}\n")),
                Err(_) => respond(out, 404, &format!("{name} is not set\n")),
            }
        } else if path == "/outbound" {
            let outgoing = OutgoingRequest::new(Fields::new());
            let _ = outgoing.set_method(&Method::Get);
            let _ = outgoing.set_scheme(Some(&Scheme::Http));
            let _ = outgoing.set_authority(Some("127.0.0.1:9"));
            let _ = outgoing.set_path_with_query(Some("/"));
            let answer = match wasip2::http::outgoing_handler::handle(outgoing, None) {
                Ok(future) => {
                    future.subscribe().block();
                    match future.get() {
                        Some(Ok(Ok(_))) => "allowed".to_string(),
                        Some(Ok(Err(code))) => format!("refused: {code:?}"),
                        other => format!("no answer: {other:?}"),
                    }
                }
                Err(code) => format!("refused: {code:?}"),
            };
            respond(out, 200, &format!("{answer}\n"));
        } else if let Some(mib) = path.strip_prefix("/alloc/") {
            let mib: usize = mib.parse().unwrap_or(1);
            let mut blocks = Vec::new();
            for i in 0..mib {
                let mut block = vec![0u8; 1 << 20];
                block[0] = i as u8;
                blocks.push(block);
            }
            respond(out, 200, &format!("allocated {} MiB\n", blocks.len()));
        } else if path == "/loop" {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        } else {
            let mut text = "Hello from Shoal!\n".to_string();
            if let Ok(greeting) = std::env::var("GREETING") {
                text.push_str(&format!("GREETING: {greeting}\n"));
            }
            respond(out, 200, &text);
        }
    }
}
