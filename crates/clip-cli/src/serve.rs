//! `clip serve`: an index and its model behind HTTP, for applications and for people: a search
//! page at `/`, JSON at `/search` (text query by GET, image query by POST), the indexed images at
//! `/image/N`.
//!
//! On axum (hyper, tokio): connections are tasks, not threads, so slow or idle clients hold up
//! nobody; hyper bounds a request's head (about 400 KB) and uploads are bounded here; queries run
//! on tokio's blocking threads, sharing the loaded model.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use clap::Args;
use clip_infer::{Match, SearchService};
use serde::Serialize;

use crate::backend::parse_backend;
use crate::backend::{dispatch_infer, BackendChoice, InferTask};

/// Largest accepted upload (an image query).
const MAX_UPLOAD: usize = 32 << 20;
/// Most results one query may ask for.
const MAX_K: usize = 1000;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Index directory made by `clip embed`.
    #[arg(long)]
    pub index: PathBuf,
    /// Use this run's model instead of the one recorded in the index (must be the same model).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Address to listen on (`0.0.0.0` to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, value_parser = parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}

/// What `/search` answers.
#[derive(Serialize)]
struct SearchReply<'a> {
    query: &'a str,
    images: usize,
    milliseconds: f64,
    matches: Vec<MatchReply>,
}

#[derive(Serialize)]
struct MatchReply {
    #[serde(flatten)]
    found: Match,
    url: String,
}

/// An HTTP error reply: status and message (as JSON `{"error": ...}`).
struct Failure(u16, String);

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Self {
        Failure(400, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Shared<B> = Arc<SearchService<B>>;
type Reply = Result<Response, Failure>;

impl InferTask for ServeArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, backend: &str) -> Result<()> {
        let service =
            Arc::new(SearchService::<B>::open(&self.index, self.checkpoint.as_deref(), &device)?);
        let images = service.len();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the server's runtime")?;
        runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::bind((self.host.as_str(), self.port)).await.map_err(
                    |e| anyhow::anyhow!("cannot listen on {}:{}: {e}", self.host, self.port),
                )?;
            let address = listener.local_addr()?;
            println!(
                "serving {images} images from {} ({backend}) at http://{address}/",
                self.index.display()
            );
            use std::io::Write;
            std::io::stdout().flush().ok();
            axum::serve(listener, router(service)).await.context("the server stopped")
        })
    }
}

fn router<B: Backend>(service: Shared<B>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health::<B>))
        .route("/search", get(search_text::<B>).post(search_image::<B>))
        .route("/image/{n}", get(image::<B>))
        .fallback(|request: Request| async move {
            let path = request.uri().path().to_string();
            Failure(404, format!("nothing at {path}: try /, /search?q=..., /image/N or /health"))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            Failure(
                405,
                format!("{} is not answered at {}", request.method(), request.uri().path()),
            )
        })
        .layer(axum::middleware::from_fn(log))
        .with_state(service)
}

/// One line per request on stderr: method, target, status, time.
async fn log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let response = next.run(request).await;
    eprintln!(
        "{method} {uri} → {} in {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Runs a query on a blocking thread (the model's work is not async); a panic inside becomes a
/// 500 for that request, not the end of the server.
async fn blocking(work: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        let what = e.try_into_panic().ok().and_then(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        });
        Err(Failure(500, format!("internal error: {}", what.unwrap_or_default())))
    })
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn health<B: Backend>(State(service): State<Shared<B>>) -> Response {
    Json(serde_json::json!({ "images": service.len(), "model": service.model.id })).into_response()
}

fn params(query: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn parse_k(k: Option<&str>) -> Result<usize, Failure> {
    match k {
        None => Ok(9),
        Some(k) => match k.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => Ok(k),
            _ => {
                Err(Failure(400, format!("k must be a whole number from 1 to {MAX_K}, got {k:?}")))
            }
        },
    }
}

fn reply(query: &str, images: usize, started: Instant, matches: Vec<Match>) -> Response {
    let matches = matches
        .into_iter()
        .map(|m| MatchReply { url: format!("/image/{}", m.index), found: m })
        .collect();
    Json(SearchReply {
        query,
        images,
        milliseconds: started.elapsed().as_secs_f64() * 1e3,
        matches,
    })
    .into_response()
}

async fn search_text<B: Backend>(
    State(service): State<Shared<B>>,
    RawQuery(query): RawQuery,
) -> Reply {
    let started = Instant::now();
    let params = params(query);
    let q = param(&params, "q")
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| Failure(400, "give a text query: /search?q=a+dog+on+a+beach&k=9".into()))?
        .to_string();
    let k = parse_k(param(&params, "k"))?;
    blocking(move || Ok(reply(&q, service.len(), started, service.by_text(&q, k)?))).await
}

async fn search_image<B: Backend>(
    State(service): State<Shared<B>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let started = Instant::now();
    let too_large = || Failure(413, format!("an image query is at most {} MB", MAX_UPLOAD >> 20));
    // Announced too large: refused before a byte of it is read.
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if announced.is_some_and(|n: usize| n > MAX_UPLOAD) {
        return Err(too_large());
    }
    let params = params(query);
    let k = parse_k(param(&params, "k"))?;
    // Read up to the limit only (a chunked upload announces nothing).
    let body = axum::body::to_bytes(body, MAX_UPLOAD).await.map_err(|e| {
        let source = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        if source.contains("length limit") || e.to_string().contains("length limit") {
            too_large()
        } else {
            Failure(400, format!("cannot read the upload: {e}"))
        }
    })?;
    if body.is_empty() {
        return Err(Failure(
            400,
            "POST an image (JPEG, PNG or WebP bytes) as the request body".into(),
        ));
    }
    blocking(move || {
        let found = service.by_image_bytes(body.to_vec(), "the uploaded image", k)?;
        Ok(reply("(image)", service.len(), started, found))
    })
    .await
}

async fn image<B: Backend>(State(service): State<Shared<B>>, UrlPath(n): UrlPath<String>) -> Reply {
    let path = n
        .parse::<usize>()
        .ok()
        .and_then(|i| service.path(i))
        .ok_or_else(|| Failure(404, format!("no image {n:?} in the index")))?
        .to_path_buf();
    let bytes = tokio::task::spawn_blocking({
        let path = path.clone();
        move || clip_data::shards::read_image_bytes(&path)
    })
    .await
    .map_err(|e| Failure(500, e.to_string()))?
    .map_err(|e| Failure(404, e.to_string()))?;
    let kind =
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            Some("gif") => "image/gif",
            Some("bmp") => "image/bmp",
            _ => "application/octet-stream",
        };
    Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response())
}

/// The search page: a text box and an image upload, results as a grid.
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clip search</title>
<style>
body { font-family: sans-serif; margin: 2em; }
form { margin-bottom: 1em; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure { margin: 0; } img { width: 100%; border-radius: 4px; } figcaption { font-size: 12px; color: #444; word-break: break-all; }
</style></head>
<body>
<h1>clip search</h1>
<form id="text"><input id="q" size="60" placeholder="describe an image" autofocus> <input id="k" type="number" value="12" min="1" max="1000"> <button>search</button></form>
<form id="upload"><input id="file" type="file" accept="image/*"> <button>find similar images</button></form>
<p id="status"></p><div id="results"></div>
<script>
async function show(response) {
  const body = await response.json();
  const status = document.getElementById('status');
  const results = document.getElementById('results');
  results.innerHTML = '';
  if (!response.ok) { status.textContent = body.error; return; }
  status.textContent = `${body.matches.length} of ${body.images} images in ${body.milliseconds.toFixed(0)} ms`;
  for (const m of body.matches) {
    const fig = document.createElement('figure');
    const img = document.createElement('img'); img.src = m.url; img.loading = 'lazy';
    const cap = document.createElement('figcaption'); cap.textContent = `${m.score.toFixed(3)} ${m.path}`;
    fig.append(img, cap); results.append(fig);
  }
}
const k = () => document.getElementById('k').value;
document.getElementById('text').onsubmit = (e) => { e.preventDefault();
  fetch(`/search?q=${encodeURIComponent(document.getElementById('q').value)}&k=${k()}`).then(show); };
document.getElementById('upload').onsubmit = (e) => { e.preventDefault();
  const f = document.getElementById('file').files[0]; if (f) fetch(`/search?k=${k()}`, { method: 'POST', body: f }).then(show); };
</script></body></html>
"#;
