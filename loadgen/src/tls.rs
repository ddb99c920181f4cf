//! TLS for `https://` targets: the client configuration (built once per run from `--cacert`,
//! `--insecure` and `--tls-ciphers`), the check that refuses an untrusted server before the clock
//! starts, and the mapping of rustls errors to error kinds.
//!
//! rustls 0.23 with the ring provider, the same crate and provider the workspace already locks.
//! The per-connection state machine (handshake, records in and out on a non-blocking socket) is
//! in [`crate::conn`]; a blocking stream for setup fetches is [`BlockingTls`].
//!
//! Every new connection makes a full handshake (session resumption is off): "new connections
//! per second" then measures what a server pays for a new buyer, not for a returning one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

use crate::errors::ErrorKind;
use crate::target::Url;

/// How to trust the server and what to offer it.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions<'a> {
    /// PEM file of the CA certificate(s) to trust (replaces any default: there is none).
    pub cacert: Option<&'a Path>,
    /// Accept any certificate (signatures are still checked).
    pub insecure: bool,
    /// Comma-separated rustls suite names to offer (e.g. `TLS13_AES_128_GCM_SHA256`).
    pub ciphers: Option<&'a str>,
}

/// The client side of TLS for one run: shared configuration and the name the server is asked for.
#[derive(Clone, Debug)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// The TLS setup for `url`: `None` for `http://`, an error for `https://` without a way to
    /// trust the server (weir-load carries no public roots: it is pointed at servers you own).
    pub fn for_url(url: &Url, opts: &TlsOptions<'_>) -> anyhow::Result<Option<Arc<Tls>>> {
        if !url.tls {
            return Ok(None);
        }
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|e| anyhow::anyhow!("{}: not a TLS server name: {e}", url.host))?;
        Ok(Some(Arc::new(Tls {
            config: client_config(opts)?,
            server_name,
        })))
    }

    /// A fresh client connection (its ClientHello is queued, nothing is sent yet).
    pub fn connection(&self) -> Result<ClientConnection, ErrorKind> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| error_kind(&e))
    }
}

/// The TLS setup of a scenario's `url` from its common flags.
pub fn from_common(url: &Url, c: &crate::cli::Common) -> anyhow::Result<Option<Arc<Tls>>> {
    Tls::for_url(
        url,
        &TlsOptions {
            cacert: c.cacert.as_deref(),
            insecure: c.insecure,
            ciphers: c.tls_ciphers.as_deref(),
        },
    )
}

fn provider(ciphers: Option<&str>) -> anyhow::Result<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(list) = ciphers {
        let wanted: Vec<String> = list
            .split(',')
            .map(|s| s.trim().to_ascii_uppercase())
            .filter(|s| !s.is_empty())
            .collect();
        let known: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        for w in &wanted {
            anyhow::ensure!(
                known.contains(w),
                "--tls-ciphers: unknown suite {w} (known: {})",
                known.join(", ")
            );
        }
        p.cipher_suites
            .retain(|s| wanted.contains(&format!("{:?}", s.suite())));
    }
    Ok(p)
}

/// Build the client configuration: trust from `--cacert` or none checked (`--insecure`), HTTP/1.1
/// by ALPN, no session resumption.
pub fn client_config(opts: &TlsOptions<'_>) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(provider(opts.ciphers)?);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    let mut config = match (opts.cacert, opts.insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        (Some(path), false) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "--cacert {}: no PEM certificate in it",
                path.display()
            );
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, false) => anyhow::bail!(
            "an https:// target needs --cacert FILE (the CA that signed the server's certificate) \
             or --insecure"
        ),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate chain is accepted; the handshake signatures are still verified
/// with the provider's algorithms (so the server must hold the key of the certificate it sends).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The error kind of a rustls failure: the certificate (untrusted, wrong name, expired) or any
/// other TLS failure (alert, bad record, no common suite).
pub fn error_kind(e: &rustls::Error) -> ErrorKind {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            ErrorKind::TlsCertificate
        }
        _ => ErrorKind::Tls,
    }
}

/// A blocking TLS stream over a connected socket, for the setup fetches (the `--sha256`
/// reference GET). Reads and writes are bounded by the socket's timeouts.
pub type BlockingTls = rustls::StreamOwned<ClientConnection, TcpStream>;

/// Why a blocking handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TLS layer refused: untrusted certificate, alert, no common suite.
    #[error("TLS handshake with {name} {}", tls_reason(.error))]
    Tls { name: String, error: rustls::Error },
    /// The socket failed or closed during the handshake.
    #[error("TLS handshake with {name} failed: {error}")]
    Io { name: String, error: std::io::Error },
}

fn tls_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!(
            "refused: the server's certificate is not trusted ({c:?}); pass --cacert FILE with \
             the CA that signed it, or --insecure"
        ),
        other => format!("failed: {other}"),
    }
}

/// Wrap a connected socket in TLS and finish the handshake (blocking).
pub fn blocking(tls: &Tls, sock: TcpStream) -> Result<BlockingTls, HandshakeError> {
    let name = tls.server_name.to_str().into_owned();
    let conn =
        ClientConnection::new(tls.config.clone(), tls.server_name.clone()).map_err(|error| {
            HandshakeError::Tls {
                name: name.clone(),
                error,
            }
        })?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            let inner = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .cloned();
            return Err(match inner {
                Some(error) => HandshakeError::Tls { name, error },
                None => HandshakeError::Io { name, error: e },
            });
        }
    }
    Ok(s)
}

/// Before the clock starts: one handshake with `addr`. A certificate the options do not trust,
/// or any other TLS refusal, is an error (a run of nothing but handshake failures measures
/// nothing); a server that does not answer is not (runs count refused connections, and a
/// harness may start the server later).
pub fn check(tls: &Tls, addr: SocketAddr, timeout: Duration) -> Result<(), HandshakeError> {
    let Ok(sock) = TcpStream::connect_timeout(&addr, timeout) else {
        return Ok(());
    };
    let _ = sock.set_read_timeout(Some(timeout));
    let _ = sock.set_write_timeout(Some(timeout));
    let mut s = match blocking(tls, sock) {
        Ok(s) => s,
        Err(e @ HandshakeError::Tls { .. }) => return Err(e),
        Err(HandshakeError::Io { .. }) => return Ok(()),
    };
    s.conn.send_close_notify();
    let _ = s.flush();
    let mut one = [0u8; 1];
    let _ = s.sock.set_read_timeout(Some(Duration::from_millis(1)));
    let _ = s.read(&mut one);
    Ok(())
}
