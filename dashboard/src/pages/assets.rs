//! The stylesheet and the script, built into the binary and served with
//! long cache lifetimes: their URLs carry a hash of their content, so a
//! new build's pages ask for new files.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

fn asset(file: &str) -> Option<(&'static str, &'static str)> {
    match file {
        "style.css" => Some((STYLE, "text/css; charset=utf-8")),
        "app.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        _ => None,
    }
}

/// `/static/FILE?v=HASH`: the hash changes with the content.
pub fn url(file: &'static str) -> String {
    static VERSIONS: OnceLock<(String, String)> = OnceLock::new();
    let (style, script) = VERSIONS.get_or_init(|| {
        let version = |text: &str| blake3::hash(text.as_bytes()).to_hex()[..12].to_owned();
        (version(STYLE), version(SCRIPT))
    });
    let version = if file == "style.css" { style } else { script };
    format!("/static/{file}?v={version}")
}

pub async fn serve(Path(file): Path<String>) -> Response {
    match asset(&file) {
        Some((body, content_type)) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            response
        }
        None => super::errors::Problem::new(StatusCode::NOT_FOUND, format!("no file {file:?}"))
            .into_response(),
    }
}
