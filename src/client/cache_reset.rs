//! Emptying a server's prefix cache between sweep levels (`--reset-cache`): vLLM serves
//! `POST /reset_prefix_cache`, SGLang `POST /flush_cache`. Neither is part of the OpenAI API,
//! so a server may have neither; the caller records what answered.

use std::time::Duration;

use super::http::{describe_reqwest, ClientConfig};

/// The endpoints tried, in order.
pub const RESET_PATHS: [&str; 2] = ["/reset_prefix_cache", "/flush_cache"];

/// Asks the server to empty its cache: `Ok(path)` of the endpoint that answered 2xx, else
/// `Err` with what each endpoint said.
pub async fn reset_cache(http: &reqwest::Client, cfg: &ClientConfig) -> Result<String, String> {
    let base = cfg
        .url("")
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    let mut said = Vec::new();
    for path in RESET_PATHS {
        let mut req = http
            .post(format!("{base}{path}"))
            .timeout(Duration::from_secs(30));
        if let Some(k) = &cfg.api_key {
            req = req.bearer_auth(k);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(path.to_owned()),
            Ok(r) => said.push(format!("{path}: HTTP {}", r.status().as_u16())),
            Err(e) => said.push(format!("{path}: {}", describe_reqwest(&e))),
        }
    }
    Err(said.join("; "))
}
