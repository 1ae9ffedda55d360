//! The peer of `cargo xtask bench http`: a minimal server of a `wasi:http/proxy` component with
//! wasmtime-wasi-http, the same wasmtime version as Shoal, a fresh instance per request, the way
//! `wasmtime serve` does it (without its CLI). Arguments: the component file, the address.

use std::convert::Infallible;
use std::future::Future;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Deny,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound requests are refused, as in Shoal.
struct Deny;

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for Deny {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Sent {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

async fn handle(
    engine: Engine,
    pre: ProxyPre<Host>,
    request: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = Store::new(
        &engine,
        Host {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Deny,
        },
    );
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(wasmtime::Error::msg(format!("guest error {code:?}"))),
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(wasmtime::Error::msg("no response")),
        },
    }
}

fn setup(file: &str) -> wasmtime::Result<(Engine, ProxyPre<Host>)> {
    let engine = Engine::new(&Config::new())?;
    let component = Component::from_file(&engine, file)?;
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    Ok((engine, pre))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .ok_or("usage: wasmtime-serve COMPONENT [ADDR]")?;
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
        .parse()?;
    let (engine, pre) = setup(&file).map_err(|e| format!("{e:#}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (engine, pre) = (engine.clone(), pre.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (engine, pre) = (engine.clone(), pre.clone());
                async move {
                    Ok::<_, Infallible>(match handle(engine, pre, request).await {
                        Ok(response) => response,
                        Err(e) => {
                            use http_body_util::BodyExt;
                            let body =
                                http_body_util::Full::new(bytes::Bytes::from(format!("{e:#}\n")))
                                    .map_err(|never: Infallible| match never {})
                                    .boxed_unsync();
                            let mut response = hyper::Response::new(body);
                            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            response
                        }
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
