//! The server side of HTTP for tests that stand up a streaming server in-process.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads one HTTP request; returns the request line and the body.
pub async fn read_request(sock: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let line = head.lines().next().unwrap_or("").to_string();
            return Some((
                line,
                String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned(),
            ));
        }
    }
}
