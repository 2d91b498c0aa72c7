//! How a worker or a command-line client reaches the coordinator: the cluster token on every
//! call, and TLS — a certificate signed by a CA the client trusts, or a self-signed one pinned
//! by its SHA-256 fingerprint (what the coordinator prints at start).
//!
//! The token is a secret: it is read from an owner-only file, never logged, never printed
//! (its `Debug` is redacted), and compared in constant time.

use anyhow::Context as _;
use plateflow_proto::v1::coordinator_client::CoordinatorClient;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The metadata key that carries the token (`authorization: Bearer <token>`).
pub const AUTH_HEADER: &str = "authorization";

/// The cluster token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// 256 random bits, hex-encoded.
    pub fn generate() -> anyhow::Result<Token> {
        let mut bytes = [0u8; 32];
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom for a new cluster token")?;
        Ok(Token(hex::encode(bytes)))
    }

    /// From a token string (e.g. handed to a local worker by its parent process).
    pub fn from_secret(s: &str) -> anyhow::Result<Token> {
        let t = s.trim();
        anyhow::ensure!(
            t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()),
            "a cluster token must be at least 16 printable characters"
        );
        Ok(Token(t.to_string()))
    }

    /// Reads a token file, refusing one that others can read: a token the whole machine
    /// can see authenticates nobody.
    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot read the cluster token file {}: it is written by `plateflow coordinator` \
                 (default: <state>/token); copy it here with owner-only permissions",
                path.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            anyhow::ensure!(
                mode & 0o077 == 0,
                "the cluster token file {} is readable by others (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cluster token file {}", path.display()))?;
        Token::from_secret(&text).with_context(|| format!("{}", path.display()))
    }

    /// Writes a new token file atomically with owner-only permissions, or reads the existing
    /// one (so workers keep working across coordinator restarts).
    pub fn read_or_create(path: &Path) -> anyhow::Result<Token> {
        if path.exists() {
            return Token::read(path);
        }
        let token = Token::generate()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?; // created 0600
        std::fs::write(tmp.path(), format!("{}\n", token.0))?;
        // Never over another's: a process that made the file first since the check above
        // keeps it, and this one reads it (workers given that token keep working).
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(token),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Token::read(path),
            Err(e) => Err(anyhow::Error::from(e.error))
                .with_context(|| format!("writing the cluster token file {}", path.display())),
        }
    }

    /// The secret itself, to hand to a child process (never to a log).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a caller presented.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn header(&self) -> MetadataValue<Ascii> {
        format!("Bearer {}", self.0)
            .parse()
            .expect("a token is printable ASCII")
    }
}

/// How to check the coordinator's certificate.
#[derive(Debug, Clone, Default)]
pub enum Tls {
    /// Plain HTTP/2 (a laptop, or a private network with a token).
    #[default]
    Off,
    /// A certificate signed by this CA (PEM).
    Ca(PathBuf),
    /// Exactly this certificate: the SHA-256 of its DER, as the coordinator printed it.
    Pinned([u8; 32]),
}

impl Tls {
    /// `--tls-ca` and `--tls-fingerprint` as given on a command line.
    pub fn from_args(ca: Option<PathBuf>, fingerprint: Option<&str>) -> anyhow::Result<Tls> {
        match (ca, fingerprint) {
            (Some(_), Some(_)) => anyhow::bail!("give --tls-ca or --tls-fingerprint, not both"),
            (Some(ca), None) => Ok(Tls::Ca(ca)),
            (None, Some(f)) => Ok(Tls::Pinned(parse_fingerprint(f)?)),
            (None, None) => Ok(Tls::Off),
        }
    }
}

/// `sha256:ab12…` (64 hex digits; colons between bytes allowed, as `openssl x509 -fingerprint`
/// prints them).
pub fn parse_fingerprint(s: &str) -> anyhow::Result<[u8; 32]> {
    let hexed: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&hexed)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{s}` is not a SHA-256 fingerprint: expected `sha256:` and 64 hex digits, as \
                 `plateflow coordinator` prints at start"
            )
        })?;
    Ok(bytes.try_into().expect("32 bytes"))
}

/// The fingerprint of a DER certificate, as printed and as pinned.
pub fn fingerprint_of(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Everything a client needs besides the address.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub token: Option<Token>,
    pub tls: Tls,
}

impl Access {
    /// From command-line arguments: a token file (or a token handed down in
    /// `PLATEFLOW_TOKEN` by `plateflow run` to its own workers) and the TLS options.
    pub fn from_args(
        token_file: Option<&Path>,
        tls_ca: Option<PathBuf>,
        tls_fingerprint: Option<&str>,
    ) -> anyhow::Result<Access> {
        let token = match token_file {
            Some(p) => Some(Token::read(p)?),
            None => match std::env::var("PLATEFLOW_TOKEN") {
                Ok(s) if !s.is_empty() => Some(Token::from_secret(&s)?),
                _ => None,
            },
        };
        Ok(Access {
            token,
            tls: Tls::from_args(tls_ca, tls_fingerprint)?,
        })
    }
}

/// Adds the token to every call.
#[derive(Clone)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A client of the coordinator that sends the token.
pub type Client = CoordinatorClient<InterceptedService<Channel, AddToken>>;

/// `host:port` or a URL, with the scheme that the TLS setting needs.
fn url_for(addr: &str, tls: &Tls) -> anyhow::Result<String> {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"));
    let host_port = rest.unwrap_or(addr);
    match tls {
        Tls::Off if addr.starts_with("https://") => anyhow::bail!(
            "{addr}: an https:// coordinator needs --tls-fingerprint (printed by the coordinator \
             at start) or --tls-ca"
        ),
        Tls::Off => Ok(format!("http://{host_port}")),
        // The pinned connector does TLS itself, under tonic's plain-HTTP/2 channel.
        Tls::Pinned(_) => Ok(format!("http://{host_port}")),
        Tls::Ca(_) => Ok(format!("https://{host_port}")),
    }
}

/// Connects to the coordinator at `addr`. Errors say what to check: the address, TLS on one
/// side only, the certificate.
pub async fn connect(addr: &str, access: &Access, timeout: Duration) -> anyhow::Result<Client> {
    let url = url_for(addr, &access.tls)?;
    // HTTP/2 pings find a dead link (a cut cable, a paused VM) in seconds, not after TCP's
    // retransmission timeout of many minutes.
    let endpoint = Endpoint::from_shared(url.clone())?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let hint = match &access.tls {
        Tls::Off => " (if the coordinator uses TLS, pass --tls-fingerprint as it printed at start, or --tls-ca)",
        Tls::Pinned(_) | Tls::Ca(_) => " (does the coordinator use TLS with this certificate? a plain-text coordinator cannot answer a TLS client)",
    };
    let channel = match &access.tls {
        Tls::Off => endpoint.connect().await,
        Tls::Ca(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the CA certificate {}", ca.display()))?;
            let host = url::host_of(&url);
            endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        .domain_name(host),
                )?
                .connect()
                .await
        }
        Tls::Pinned(fp) => {
            let config = pinned::client_config(*fp);
            endpoint
                .connect_with_connector(pinned::connector(config))
                .await
        }
    }
    .map_err(|e| {
        let msg = format!(
            "cannot reach the coordinator at {addr}: {}{hint}",
            chain(&e)
        );
        // A certificate that is not the pinned one, or TLS against plain text, stays so:
        // retrying cannot help.
        if is_tls_failure(&e) {
            anyhow::Error::from(Refused(msg))
        } else {
            anyhow::anyhow!(msg)
        }
    })?;
    let mut client = CoordinatorClient::with_interceptor(
        channel,
        AddToken(access.token.as_ref().map(Token::header)),
    );
    // The channel connects lazily enough that TLS on one side only, or a refused token,
    // would surface at some later call: ask one cheap question now, so they surface here.
    if let Err(status) = client
        .find_missing_blobs(plateflow_proto::v1::FindMissingBlobsRequest { digests: vec![] })
        .await
    {
        if status.code() == tonic::Code::Unauthenticated {
            return Err(Refused(format!(
                "the coordinator at {addr} refused the credentials: {}",
                status.message()
            ))
            .into());
        }
        let mut why = status.message().to_string();
        let transport = std::error::Error::source(&status);
        if let Some(source) = transport {
            why = format!("{why}: {}", chain(source));
        }
        // Plain text to a server that speaks TLS: a misconfiguration, not an outage.
        if matches!(access.tls, Tls::Off) && transport.is_some() {
            let host = url::host_of(&url);
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .unwrap_or(7700);
            if let Some(fp) = pinned::speaks_tls(&host, port).await {
                return Err(Refused(format!(
                    "the coordinator at {addr} speaks TLS (its certificate is {fp}) and this \
                     client does not: pass --tls-fingerprint with the fingerprint the \
                     coordinator printed at start (or --tls-ca)"
                ))
                .into());
            }
        }
        anyhow::bail!("cannot talk to the coordinator at {addr}: {why}{hint}");
    }
    Ok(client)
}

/// Did the TLS handshake itself fail (a certificate, or a peer that does not speak TLS)?
/// rustls errors travel inside `io::Error`s, which do not list them as sources.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// An error with its causes, which is where TLS and connection failures say what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The coordinator refused our credentials: retrying cannot help.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Is this the coordinator refusing our credentials?
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Refused>()
            || c.downcast_ref::<Status>()
                .is_some_and(|s| s.code() == tonic::Code::Unauthenticated)
    })
}

mod url {
    /// The host of `scheme://host:port/…` (brackets kept off IPv6 literals).
    pub fn host_of(url: &str) -> String {
        let rest = url.split("://").nth(1).unwrap_or(url);
        let authority = rest.split('/').next().unwrap_or(rest);
        if let Some(v6) = authority.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6).to_string();
        }
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_string()
    }
}

/// TLS that trusts exactly one certificate, by fingerprint: for a coordinator with a
/// self-signed certificate on a private network, with no CA to run.
mod pinned {
    use super::*;
    use hyper_util::rt::TokioIo;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct Pin {
        /// `None`: accept any certificate (only to find out whether a server speaks TLS;
        /// nothing is ever sent over such a connection).
        fingerprint: Option<[u8; 32]>,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for Pin {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            // The pin replaces name and chain checks: only this exact certificate is trusted.
            let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
            let Some(pinned) = self.fingerprint else {
                return Ok(ServerCertVerified::assertion());
            };
            if got == pinned {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(format!(
                    "the coordinator's certificate has fingerprint {}, not the pinned sha256:{} \
                     (a different coordinator, or its certificate was replaced)",
                    fingerprint_of(end_entity.as_ref()),
                    hex::encode(pinned)
                )))
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    pub fn client_config(fingerprint: [u8; 32]) -> Arc<rustls::ClientConfig> {
        config_for(Some(fingerprint))
    }

    /// Does the server at `host:port` complete a TLS handshake? Its certificate's fingerprint
    /// if so. Used only to explain a plain-text client's failure; nothing is sent after.
    pub async fn speaks_tls(host: &str, port: u16) -> Option<String> {
        let probe = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .unwrap_or_else(|_| ServerName::try_from("plateflow").expect("valid name"));
            let tls = tokio_rustls::TlsConnector::from(config_for(None))
                .connect(name, tcp)
                .await
                .ok()?;
            let cert = tls.get_ref().1.peer_certificates()?.first()?.clone();
            Some(fingerprint_of(cert.as_ref()))
        };
        tokio::time::timeout(Duration::from_secs(3), probe)
            .await
            .ok()
            .flatten()
    }

    fn config_for(fingerprint: Option<[u8; 32]>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pin {
                fingerprint,
                provider,
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// TCP, then TLS with the pin, under tonic's HTTP/2.
    pub fn connector(
        config: Arc<rustls::ClientConfig>,
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
           + Send {
        tower::service_fn(move |uri: http::Uri| {
            let config = config.clone();
            async move {
                let host = uri.host().unwrap_or("localhost").to_string();
                let port = uri.port_u16().unwrap_or(7700);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                // The name only travels as SNI: the pin, not the name, is checked.
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .unwrap_or_else(|_| ServerName::try_from("plateflow").expect("valid name"));
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok(TokioIo::new(tls))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly_and_never_print() {
        let t = Token::from_secret("0123456789abcdef0123").unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef0124"));
        assert!(!t.matches("0123456789abcdef012"));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::from_secret("short").is_err());
    }

    #[test]
    fn token_files_must_be_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let made = Token::read_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            Token::read_or_create(&p).unwrap(),
            made,
            "kept across restarts"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("readable by others") && e.contains("chmod 600"),
            "{e}"
        );
    }

    #[test]
    fn fingerprints_parse_in_both_spellings() {
        let hexed = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hexed}")).unwrap(),
            parse_fingerprint(&colons).unwrap()
        );
        assert!(parse_fingerprint("sha256:abcd").is_err());
        assert_eq!(url::host_of("https://node7:7700"), "node7");
        assert_eq!(url::host_of("https://[::1]:7700/x"), "::1");
    }
}
