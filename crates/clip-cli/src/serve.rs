//! `clip serve`: an index and its model behind HTTP, for applications and for people: a search
//! page at `/`, JSON at `/search` (text query by GET, image query by POST), the indexed images at
//! `/image/N`. A few worker threads share the loaded model.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use clip_infer::{Match, SearchService};
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

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

/// An HTTP error reply: status and message.
struct Failure(u16, String);

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Self {
        Failure(400, e.to_string())
    }
}

impl InferTask for ServeArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, backend: &str) -> Result<()> {
        let service = SearchService::<B>::open(&self.index, self.checkpoint.as_deref(), &device)?;
        let server = Server::http((self.host.as_str(), self.port))
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", self.host, self.port))?;
        let address = server.server_addr().to_ip().context("not an IP address")?;
        println!(
            "serving {} images from {} ({backend}) at http://{address}/",
            service.len(),
            self.index.display()
        );
        use std::io::Write;
        std::io::stdout().flush().ok();
        // A few workers share the loaded model: a slow upload or a long query does not hold up
        // the others.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Ok(request) = server.recv() {
                        let started = Instant::now();
                        let (method, url) = (request.method().clone(), request.url().to_string());
                        let status = answer(&service, request);
                        eprintln!(
                            "{method} {url} → {status} in {:.1} ms",
                            started.elapsed().as_secs_f64() * 1e3
                        );
                    }
                });
            }
        });
        Ok(())
    }
}

/// Answers one request; returns its status code. A panic while answering (a decoder's, say)
/// becomes a 500 for that request, not the end of the server.
fn answer<B: Backend>(service: &SearchService<B>, mut request: Request) -> u16 {
    let reply =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply_to(service, &mut request)));
    let response = match reply {
        Ok(Ok(response)) => response,
        Ok(Err(Failure(status, message))) => {
            json(&serde_json::json!({ "error": message })).with_status_code(status)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            json(&serde_json::json!({ "error": format!("internal error: {}", what.unwrap_or_default()) })).with_status_code(500)
        }
    };
    let status = response.status_code().0;
    // A client that went away is not the server's problem.
    let _ = request.respond(response);
    status
}

fn reply_to<B: burn::tensor::backend::Backend>(
    service: &SearchService<B>,
    request: &mut Request,
) -> Reply {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match (request.method(), path) {
        (Method::Get, "/") => Ok(Response::from_data(PAGE.as_bytes().to_vec())
            .with_header(header("text/html; charset=utf-8"))),
        (Method::Get, "/health") => {
            let body = serde_json::json!({ "images": service.len(), "model": service.model.id });
            Ok(json(&body))
        }
        (Method::Get, "/search") => search_text(service, param("q"), param("k")),
        (Method::Post, "/search") if request.body_length().is_some_and(|n| n > MAX_UPLOAD) => {
            Err(Failure(413, format!("an image query is at most {} MB", MAX_UPLOAD >> 20)))
        }
        (Method::Post, "/search") => {
            let mut body = Vec::new();
            let read = request.as_reader().take(MAX_UPLOAD as u64 + 1).read_to_end(&mut body);
            match read {
                Err(e) => Err(Failure(400, format!("cannot read the upload: {e}"))),
                Ok(_) if body.len() > MAX_UPLOAD => {
                    Err(Failure(413, format!("an image query is at most {} MB", MAX_UPLOAD >> 20)))
                }
                Ok(_) => search_image(service, body, param("k")),
            }
        }
        (Method::Get, p) if p.starts_with("/image/") => image(service, &p["/image/".len()..]),
        (_, "/" | "/health" | "/search") => {
            Err(Failure(405, format!("{} is not answered at {path}", request.method())))
        }
        _ => Err(Failure(
            404,
            format!("nothing at {path}: try /, /search?q=..., /image/N or /health"),
        )),
    }
}

fn header(content_type: &str) -> Header {
    Header::from_bytes("Content-Type", content_type).expect("a valid header")
}

fn json<T: Serialize>(value: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::to_vec(value).expect("serializes");
    Response::from_data(body).with_header(header("application/json"))
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

fn reply(
    query: &str,
    images: usize,
    started: Instant,
    matches: Vec<Match>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let matches = matches
        .into_iter()
        .map(|m| MatchReply { url: format!("/image/{}", m.index), found: m })
        .collect();
    json(&SearchReply {
        query,
        images,
        milliseconds: started.elapsed().as_secs_f64() * 1e3,
        matches,
    })
}

type Reply = Result<Response<std::io::Cursor<Vec<u8>>>, Failure>;

fn search_text<B: burn::tensor::backend::Backend>(
    service: &SearchService<B>,
    q: Option<&str>,
    k: Option<&str>,
) -> Reply {
    let started = Instant::now();
    let q = q
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| Failure(400, "give a text query: /search?q=a+dog+on+a+beach&k=9".into()))?;
    let k = parse_k(k)?;
    Ok(reply(q, service.len(), started, service.by_text(q, k)?))
}

fn search_image<B: burn::tensor::backend::Backend>(
    service: &SearchService<B>,
    body: Vec<u8>,
    k: Option<&str>,
) -> Reply {
    let started = Instant::now();
    if body.is_empty() {
        return Err(Failure(
            400,
            "POST an image (JPEG, PNG or WebP bytes) as the request body".into(),
        ));
    }
    let k = parse_k(k)?;
    Ok(reply(
        "(image)",
        service.len(),
        started,
        service.by_image_bytes(body, "the uploaded image", k)?,
    ))
}

fn image<B: burn::tensor::backend::Backend>(service: &SearchService<B>, n: &str) -> Reply {
    let path = n
        .parse::<usize>()
        .ok()
        .and_then(|i| service.path(i))
        .ok_or_else(|| Failure(404, format!("no image {n:?} in the index")))?;
    let bytes =
        clip_data::shards::read_image_bytes(path).map_err(|e| Failure(404, e.to_string()))?;
    let kind =
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            Some("gif") => "image/gif",
            Some("bmp") => "image/bmp",
            _ => "application/octet-stream",
        };
    Ok(Response::from_data(bytes).with_header(header(kind)))
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
