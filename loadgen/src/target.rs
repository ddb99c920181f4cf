//! The target: an `http://` or `https://` URL parsed once, resolved once, and the request heads
//! built from it.
//!
//! weir-load speaks HTTP/1.1, in clear or over TLS ([`crate::tls`]). A URL may carry a query
//! (signed links pass through untouched). Credentials become a
//! ready-made `Authorization: Basic` line per user so nothing is encoded on the hot path.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use base64::Engine as _;

/// A parsed `http[s]://host[:port]/path?query` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https://`: the connection speaks TLS.
    pub tls: bool,
    /// Host as written (name or address, IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

/// Why a URL or a credentials line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("only http:// and https:// URLs are supported (got {0:?})")]
    Scheme(String),
    #[error("URL has no host: {0:?}")]
    NoHost(String),
    #[error("bad port in URL {0:?}")]
    Port(String),
    #[error("credentials must be USER:PASSWORD (got a value without ':')")]
    Credentials,
}

impl Url {
    /// Parse an absolute `http://` or `https://` URL.
    pub fn parse(s: &str) -> Result<Url, TargetError> {
        let (tls, rest) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err(TargetError::Scheme(s.to_string())),
        };
        let default_port = if tls { 443 } else { 80 };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        // userinfo in the URL is not supported: use --credentials.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| TargetError::NoHost(s.to_string()))?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| TargetError::Port(s.to_string()))?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| TargetError::Port(s.to_string()))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(TargetError::NoHost(s.to_string()));
        }
        Ok(Url {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host:` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The scheme's port (80 or 443), left out of the `Host:` header.
    pub fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Resolve the host (once, at the start of a run). An error here is the `dns` error kind.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host resolved to no address",
            ));
        }
        Ok(addrs)
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.host_header(), self.path)
    }
}

/// A ready `Authorization` header line (with CRLF), or nothing.
pub fn basic_auth_line(user_pass: &str) -> Result<String, TargetError> {
    if !user_pass.contains(':') {
        return Err(TargetError::Credentials);
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass.as_bytes());
    Ok(format!("Authorization: Basic {b64}\r\n"))
}

/// The credentials users take round robin: from `--credentials`, from a file of `user:password`
/// lines (blank lines and `#` comments skipped), or none.
pub fn load_credentials(inline: Option<&str>, file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if let Some(c) = inline {
        lines.push(basic_auth_line(c)?);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading credentials file {}: {e}", path.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            lines.push(basic_auth_line(line)?);
        }
        if lines.is_empty() {
            anyhow::bail!(
                "credentials file {} has no user:password line",
                path.display()
            );
        }
    }
    Ok(lines)
}

/// The one request a run sends over and over (`urlopen`, `rate`): a GET of the whole `url`, as
/// the `--credentials` user if given.
pub fn fixed_get(
    url: &Url,
    credentials: Option<&str>,
    keep_alive: bool,
) -> Result<Vec<u8>, TargetError> {
    let auth = match credentials {
        Some(c) => basic_auth_line(c)?,
        None => String::new(),
    };
    let mut request = Vec::new();
    write_get(
        &mut request,
        url,
        &url.host_header(),
        &auth,
        None,
        keep_alive,
    );
    Ok(request)
}

/// Write a GET request head into `buf` (cleared first). `range` is inclusive `(first, last)`;
/// `last = None` asks for everything from `first`.
pub fn write_get(
    buf: &mut Vec<u8>,
    url: &Url,
    host_header: &str,
    auth: &str,
    range: Option<(u64, Option<u64>)>,
    keep_alive: bool,
) {
    buf.clear();
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: weir-load/{}\r\n{}",
        url.path,
        host_header,
        env!("CARGO_PKG_VERSION"),
        auth
    );
    match range {
        Some((first, Some(last))) => {
            let _ = write!(s, "Range: bytes={first}-{last}\r\n");
        }
        Some((first, None)) => {
            let _ = write!(s, "Range: bytes={first}-\r\n");
        }
        None => {}
    }
    if !keep_alive {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    buf.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/d/demo-64m?sig=abc").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8080);
        assert_eq!(u.path, "/d/demo-64m?sig=abc");
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = Url::parse("http://example.test").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "example.test");
        let u = Url::parse("http://[::1]:81?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 81, "/?x=1")
        );
        assert_eq!(u.host_header(), "[::1]:81");
        assert_eq!(u.to_string(), "http://[::1]:81/?x=1");
        assert!(!u.tls);
        let u = Url::parse("https://shop.test/d/x").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.host_header()), (443, "shop.test".to_string()));
        assert_eq!(u.to_string(), "https://shop.test/d/x");
        let u = Url::parse("https://127.0.0.1:8443/f").unwrap();
        assert_eq!((u.tls, u.port), (true, 8443));
        assert_eq!(u.host_header(), "127.0.0.1:8443");
        assert_eq!(Url::parse("https://h:80/").unwrap().host_header(), "h:80");
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            Url::parse("ftp://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Url::parse("http:///x"),
            Err(TargetError::NoHost(_))
        ));
        assert!(matches!(
            Url::parse("http://x:99999/"),
            Err(TargetError::Port(_))
        ));
    }

    #[test]
    fn credentials_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, "# users\nalice:a1\n\n  bob:b:2  \n").unwrap();
        let lines = load_credentials(None, Some(&f)).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], basic_auth_line("bob:b:2").unwrap());
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(load_credentials(None, Some(&f)).is_err());
        std::fs::write(&f, "nocolon\n").unwrap();
        assert!(load_credentials(None, Some(&f)).is_err());
        assert_eq!(load_credentials(Some("u:p"), None).unwrap().len(), 1);
    }

    #[test]
    fn builds_requests() {
        let u = Url::parse("http://h:1/f").unwrap();
        let auth = basic_auth_line("demo:pw").unwrap();
        assert_eq!(auth, "Authorization: Basic ZGVtbzpwdw==\r\n");
        let mut b = Vec::new();
        write_get(
            &mut b,
            &u,
            &u.host_header(),
            &auth,
            Some((10, Some(19))),
            true,
        );
        let s = String::from_utf8(b.clone()).unwrap();
        assert!(s.starts_with("GET /f HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(s.contains("Range: bytes=10-19\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
        write_get(&mut b, &u, "h:1", "", None, false);
        let s = String::from_utf8(b).unwrap();
        assert!(!s.contains("Range"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(basic_auth_line("nocolon").is_err());
    }
}
