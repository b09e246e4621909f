//! Requests lost to stale keep-alive connections. Some servers (llama.cpp's llama-server)
//! close a keep-alive connection after a streamed response; a client that reuses it writes the
//! next request into a socket the server no longer reads, and gets "connection closed before
//! message completed" without a single response byte. The request never reached the server,
//! so sending it again on a fresh connection is safe and measures what the user meant.

use std::sync::OnceLock;

/// Whether `error`, the failure of an attempt that got no response byte (`responded` false)
/// and was not cancelled, is a connection the server closed before answering.
pub fn is_stale_connection(responded: bool, cancelled: bool, error: &str) -> bool {
    const MARKS: [&str; 3] = [
        // hyper's message for a connection closed before the response head.
        "connection closed before message completed",
        "connection reset",
        "broken pipe",
    ];
    !responded && !cancelled && MARKS.iter().any(|m| error.to_ascii_lowercase().contains(m))
}

/// A client that never reuses a connection: every request dials anew.
pub fn fresh_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    })
}
