//! What a server says about itself before any timed request: its model list (which must
//! answer, so an unreachable server fails fast), llama.cpp's `/props`, and how each server
//! kind describes its launch (TGI `/info`, SGLang `/get_server_info`, vLLM `/server_info`
//! and `/version`), kept as given so a report records what was measured.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::http::{describe_reqwest, ClientConfig};

/// The server's self-descriptions, each an endpoint's JSON, absent where it has none.
pub const FACT_PATHS: [&str; 4] = ["/info", "/get_server_info", "/server_info", "/version"];

/// What the server said about itself.
#[derive(Debug, Default)]
pub struct ServerSelf {
    /// `GET /v1/models`.
    pub models: Option<serde_json::Value>,
    /// llama.cpp's `GET /props`.
    pub props: Option<serde_json::Value>,
    /// Each of [`FACT_PATHS`] that answered with JSON, by path.
    pub facts: BTreeMap<String, serde_json::Value>,
}

/// `GET /v1/models` (must answer: fails fast on an unreachable server), then the optional
/// descriptions (`/props` and [`FACT_PATHS`]) at once.
pub async fn probe(http: &reqwest::Client, cfg: &ClientConfig) -> Result<ServerSelf> {
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
    let json_at = |path: &str| {
        let answer = get(format!("{base}{path}"));
        async move {
            match answer.await {
                Ok(r) if r.status().is_success() => r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()),
                _ => None,
            }
        }
    };
    let (props, facts) = futures_util::join!(
        json_at("/props"),
        futures_util::future::join_all(FACT_PATHS.map(json_at))
    );
    let facts = FACT_PATHS
        .iter()
        .zip(facts)
        .filter_map(|(p, v)| Some((p.to_string(), v?)))
        .collect();
    Ok(ServerSelf {
        models,
        props,
        facts,
    })
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
