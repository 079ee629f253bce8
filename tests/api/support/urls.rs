//! URL surgery for the tests: a URL's `host:port`, replaced (to go through a proxy) or resolved.

use std::net::{SocketAddr, ToSocketAddrs};

/// The `host:port` part of a URL: after the scheme and any `user:password@`, up to the path.
pub fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host, end)
}

/// `url` with its host and port replaced by `addr` (scheme, user, path and parameters kept).
pub fn with_host(url: &str, addr: SocketAddr) -> String {
    let (start, end) = authority(url);
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// The address a URL's `host:port` resolves to (`default_port` when it has none).
pub fn server_addr(url: &str, default_port: u16) -> SocketAddr {
    let (start, end) = authority(url);
    let host_port = &url[start..end];
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {with_port} (from {url})"))
}
