//! Who may talk to the coordinator, and over what: the cluster-token check on every gRPC call
//! and the server's TLS identity (given, or self-signed and kept in the state directory so its
//! fingerprint survives restarts). The client side lives in `plateflow_access`.

use anyhow::Context as _;
use plateflow_access::{fingerprint_of, Token, AUTH_HEADER};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::{Request, Status};

/// What the server enforces.
#[derive(Default)]
pub struct ServerSecurity {
    /// `None`: no token required (only `plateflow run`'s loopback default or `--no-auth`).
    pub token: Option<Token>,
    pub tls: Option<TlsIdentity>,
}

/// A certificate and key (PEM) and the fingerprint workers pin.
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub fingerprint: String,
}

/// Refuses calls without the cluster token. Refusals are logged with the caller's address;
/// the presented value never is.
#[derive(Clone)]
pub struct CheckToken(Option<Arc<Token>>);

impl CheckToken {
    pub fn new(token: Option<Token>) -> Self {
        CheckToken(token.map(Arc::new))
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match req.metadata().get(AUTH_HEADER).map(|v| v.to_str()) {
            None => {
                tracing::warn!(%peer, "refused a call without the cluster token");
                Err(Status::unauthenticated(
                    "this coordinator requires the cluster token: pass --token-file with the \
                     file the coordinator wrote (default <state>/token; it prints the path at \
                     start), or set PLATEFLOW_TOKEN_FILE",
                ))
            }
            Some(Ok(v)) if token.matches(v.strip_prefix("Bearer ").unwrap_or(v)) => Ok(req),
            Some(_) => {
                tracing::warn!(%peer, "refused a call with a wrong cluster token");
                Err(Status::unauthenticated(
                    "wrong cluster token: this coordinator was started with another one (check \
                     --token-file; a new state directory makes a new token)",
                ))
            }
        }
    }
}

/// Where a pipeline may read and write on the coordinator's machine: its file, workspace,
/// results, images, plate map and step files must all resolve (symbolic links followed)
/// under one of `roots`. No roots: no restriction (a single user's own machine).
pub fn check_confined<'a>(
    roots: &[PathBuf],
    pipeline_path: &'a Path,
    paths: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> anyhow::Result<()> {
    if roots.is_empty() {
        return Ok(());
    }
    let under = |p: &Path| -> Option<PathBuf> {
        let real = resolve_for_check(p);
        (!roots.iter().any(|r| real.starts_with(r))).then_some(real)
    };
    for (what, p) in std::iter::once(("the pipeline file", pipeline_path)).chain(paths) {
        if let Some(real) = under(p) {
            anyhow::bail!(
                "{}: {what} {} is outside the directories this coordinator serves ({}); \
                 move it there, or start the coordinator with another --allow-root",
                pipeline_path.display(),
                if real == p {
                    p.display().to_string()
                } else {
                    format!("{} (really {})", p.display(), real.display())
                },
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// Where `p` really points, for the confinement check. A path that does not exist yet (results)
/// is its nearest existing ancestor, resolved, followed by the rest taken lexically; a `..` in
/// that rest cannot be resolved against the filesystem (the directory it climbs out of does not
/// exist), so it climbs lexically and `nonexist/../../x` lands outside, as it would when created.
fn resolve_for_check(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut probe = p.to_path_buf();
    let base = loop {
        match std::fs::canonicalize(&probe) {
            Ok(r) => break r,
            Err(_) => {
                let (Some(parent), Some(name)) = (probe.parent(), probe.components().next_back())
                else {
                    break PathBuf::from("/");
                };
                rest.push(name.as_os_str().to_os_string());
                probe = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
        }
    };
    let mut real = base;
    for part in rest.iter().rev() {
        if part == ".." {
            real.pop();
        } else if part != "." {
            real.push(part);
        }
    }
    real
}

/// The TLS identity from `--tls-cert`/`--tls-key`, or a self-signed one in `dir` (made once,
/// then reused, so pinned fingerprints stay valid across restarts).
pub fn tls_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    self_signed_dir: Option<&Path>,
) -> anyhow::Result<Option<TlsIdentity>> {
    let (cert_path, key_path): (PathBuf, PathBuf) = match (cert, key, self_signed_dir) {
        (Some(c), Some(k), _) => (c.to_path_buf(), k.to_path_buf()),
        (Some(_), None, _) | (None, Some(_), _) => {
            anyhow::bail!("--tls-cert and --tls-key go together")
        }
        (None, None, Some(dir)) => {
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !(c.exists() && k.exists()) {
                write_self_signed(dir, &c, &k)?;
            }
            (c, k)
        }
        (None, None, None) => return Ok(None),
    };
    let cert_pem = std::fs::read(&cert_path)
        .with_context(|| format!("reading the TLS certificate {}", cert_path.display()))?;
    let key_pem = std::fs::read(&key_path)
        .with_context(|| format!("reading the TLS key {}", key_path.display()))?;
    let der = first_certificate_der(&cert_pem)
        .with_context(|| format!("{}: no PEM certificate in it", cert_path.display()))?;
    Ok(Some(TlsIdentity {
        fingerprint: fingerprint_of(&der),
        cert_pem,
        key_pem,
    }))
}

fn write_self_signed(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let names = vec![host, "localhost".into(), "127.0.0.1".into(), "::1".into()];
    let made = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed TLS certificate")?;
    // The key first, owner-only, each written whole under a temporary name.
    let k = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(k.path(), made.signing_key.serialize_pem())?;
    k.persist(key)?;
    let c = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(c.path(), made.cert.pem())?;
    c.persist(cert)?;
    Ok(())
}

/// The DER bytes of the first certificate of a PEM file.
fn first_certificate_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    fn call_with(header: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert(AUTH_HEADER, h.parse().unwrap());
        }
        CheckToken::new(Some(Token::from_secret("s3cret-s3cret-s3cret").unwrap()))
            .call(req)
            .map(|_| ())
    }

    #[test]
    fn the_token_is_required_and_must_match() {
        assert!(call_with(Some("Bearer s3cret-s3cret-s3cret")).is_ok());
        let missing = call_with(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("--token-file"));
        let wrong = call_with(Some("Bearer s3cret-s3cret-s3creX")).unwrap_err();
        assert!(wrong.message().contains("wrong cluster token"));
        assert!(!wrong.message().contains("s3cret"), "never echo a token");
        assert!(CheckToken::new(None).call(Request::new(())).is_ok());
    }

    #[test]
    fn pipelines_stay_under_the_allowed_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("projects");
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(root.join("a/images")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.tif"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.tif"), root.join("a/images/x.tif"))
            .unwrap();
        let roots = vec![root.clone()];
        let pipe = root.join("a/p.yaml");
        let ok = [
            ("images", root.join("a/images")),
            ("results", root.join("a/results/not-yet")),
        ];
        check_confined(&roots, &pipe, ok.iter().map(|(w, p)| (*w, p.as_path()))).unwrap();
        let e = check_confined(
            &roots,
            &pipe,
            [("image", root.join("a/images/x.tif").as_path())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("really") && e.contains("--allow-root"), "{e}");
        let e = check_confined(
            &roots,
            &pipe,
            [("images", root.join("a/../../elsewhere").as_path())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outside the directories"), "{e}");
        assert!(check_confined(&[], &pipe, [("images", outside.as_path())]).is_ok());
        // A results path that does not exist yet cannot climb out through its missing part.
        for escape in [
            "a/nonexist/../../../escaped",
            "a/x/y/../../../../escaped",
            "../escaped",
        ] {
            let e = check_confined(&roots, &pipe, [("results", root.join(escape).as_path())])
                .unwrap_err()
                .to_string();
            assert!(e.contains("outside the directories"), "{escape}: {e}");
        }
        let inside = root.join("a/nonexist/../results");
        check_confined(&roots, &pipe, [("results", inside.as_path())]).unwrap();
    }

    #[test]
    fn a_self_signed_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = tls_identity(None, None, Some(dir.path())).unwrap().unwrap();
        let b = tls_identity(None, None, Some(dir.path())).unwrap().unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(a.fingerprint.starts_with("sha256:") && a.fingerprint.len() == 7 + 64);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is owner-only");
    }
}
