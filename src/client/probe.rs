//! What a server says about itself before any timed request: its model list (which must
//! answer, so an unreachable server fails fast) and llama.cpp's `/props`.

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::http::{describe_reqwest, ClientConfig};

/// `GET /v1/models` (must answer: fails fast on an unreachable server) and llama.cpp's
/// `GET /props` (optional).
pub async fn probe(
    http: &reqwest::Client,
    cfg: &ClientConfig,
) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
    let get = |url: String| {
        let mut req = http.get(url).timeout(Duration::from_secs(10));
        if let Some(k) = &cfg.api_key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let url = cfg.url("models");
    let resp = get(url.clone()).await.map_err(|e| {
        anyhow!(
            "cannot reach the server at {url}: {} (is it running, and is --base-url right?)",
            describe_reqwest(&e)
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(200).collect();
        return Err(anyhow!(
            "GET {url} answered HTTP {}{}{} (is --base-url the server's address{}?)",
            status.as_u16(),
            if body.is_empty() { "" } else { ": " },
            body,
            if status.as_u16() == 401 || status.as_u16() == 403 {
                ", and --api-key right"
            } else {
                ""
            }
        ));
    }
    let models = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let base = cfg
        .url("")
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    let props = match get(format!("{base}/props")).await {
        Ok(r) if r.status().is_success() => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        _ => None,
    };
    Ok((models, props))
}

/// The server's context length: `--context-length`, vLLM's `max_model_len` in /v1/models, or
/// llama.cpp's `n_ctx` in /props.
/// `given` (the user's flag) wins.
pub fn context_length(
    given: Option<usize>,
    models: Option<&serde_json::Value>,
    props: Option<&serde_json::Value>,
) -> Option<usize> {
    given
        .or_else(|| {
            models
                .and_then(|m| m["data"][0]["max_model_len"].as_u64())
                .map(|n| n as usize)
        })
        .or_else(|| {
            props
                .and_then(|p| p["default_generation_settings"]["n_ctx"].as_u64())
                .map(|n| n as usize)
        })
}
