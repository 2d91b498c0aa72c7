//! Cache keys. A task's key is the SHA-256 of a canonical serialisation of everything that can
//! change its outputs: the step kind and its implementation version, the canonical parameters,
//! the fan-out values, the digests of its input files and of its upstream outputs.
//! [`why_runs`] compares the parts with those recorded in the lock file to say why a task runs.

use plateflow_store::{Digest, Sha256Writer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyParts {
    /// `command@1`
    pub kind: String,
    /// Canonical JSON (sorted keys) of the `with:` parameters.
    pub params: String,
    pub fields: BTreeMap<String, String>,
    /// Image paths relative to the image root, `file:NAME` for step files, `plate_map:NAME`.
    pub inputs: BTreeMap<String, Digest>,
    /// `upstream-label/output-name`.
    pub upstream: BTreeMap<String, Digest>,
}

/// A task's cache key: hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey(pub String);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyParts {
    /// Every part is fed to SHA-256 length-prefixed, in a fixed order (maps are sorted), so
    /// the encoding is canonical and unambiguous without building a serialisation first.
    pub fn key(&self) -> CacheKey {
        fn put(h: &mut Sha256Writer, s: &str) {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        fn put_digest(h: &mut Sha256Writer, d: &Digest) {
            h.update(d.hash());
            h.update(&d.size().to_le_bytes());
        }
        let mut h = Sha256Writer::default();
        // Versioned prefix: a change of this scheme must not collide with old keys.
        h.update(b"plateflow-key-v2\0");
        put(&mut h, &self.kind);
        put(&mut h, &self.params);
        h.update(&(self.fields.len() as u64).to_le_bytes());
        for (k, v) in &self.fields {
            put(&mut h, k);
            put(&mut h, v);
        }
        for map in [&self.inputs, &self.upstream] {
            h.update(&(map.len() as u64).to_le_bytes());
            for (k, d) in map {
                put(&mut h, k);
                put_digest(&mut h, d);
            }
        }
        CacheKey(h.finish().hex())
    }
}

/// Why a task runs, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Forced,
    New,
    KindVersion {
        from: String,
        to: String,
    },
    Param {
        name: String,
        from: String,
        to: String,
    },
    InputAdded(String),
    InputRemoved(String),
    InputChanged {
        path: String,
        from: Digest,
        to: Digest,
    },
    UpstreamChanged(String),
    UpstreamAdded(String),
    UpstreamRemoved(String),
    /// The task's own rows of the plate map changed (`scope`: `plate=P2`, or all rows).
    PlateMapRows {
        scope: String,
        detail: String,
    },
    /// The key is unchanged but no intact result is stored for it.
    NoCachedResult,
    CorruptOutput(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Forced => write!(f, "forced (--force)"),
            Reason::New => write!(f, "new task (not in the lock file)"),
            Reason::KindVersion { from, to } => write!(f, "new implementation: {from} -> {to}"),
            Reason::Param { name, from, to } => {
                write!(f, "parameter `{name}` changed: {from} -> {to}")
            }
            Reason::InputAdded(p) => write!(f, "new input {p}"),
            Reason::InputRemoved(p) => write!(f, "input removed: {p}"),
            Reason::InputChanged { path, from, to } => {
                write!(
                    f,
                    "input {path} changed: {} -> {}",
                    from.short(),
                    to.short()
                )
            }
            Reason::UpstreamChanged(o) => write!(f, "upstream output {o} changed"),
            Reason::UpstreamAdded(o) => write!(f, "new upstream output {o}"),
            Reason::UpstreamRemoved(o) => write!(f, "upstream output removed: {o}"),
            Reason::PlateMapRows { scope, detail } => {
                write!(f, "plate-map rows of {scope} changed: {detail}")
            }
            Reason::NoCachedResult => {
                write!(f, "no stored result for this key (e.g. a new workspace)")
            }
            Reason::CorruptOutput(d) => write!(f, "stored output {d} was corrupt; recomputing"),
        }
    }
}

/// Compares a task's key parts with what the lock file recorded for it (at most a few
/// reasons of each sort are listed, with a count of the rest).
pub fn why_runs(prev: Option<&KeyParts>, cur: &KeyParts) -> Vec<Reason> {
    let Some(prev) = prev else {
        return vec![Reason::New];
    };
    let mut out = Vec::new();
    if prev.kind != cur.kind {
        out.push(Reason::KindVersion {
            from: prev.kind.clone(),
            to: cur.kind.clone(),
        });
    }
    if prev.params != cur.params {
        let parse = |s: &str| -> BTreeMap<String, serde_json::Value> {
            serde_json::from_str(s).unwrap_or_default()
        };
        let (a, b) = (parse(&prev.params), parse(&cur.params));
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for n in names {
            if a.get(n) != b.get(n) {
                let show = |v: Option<&serde_json::Value>| {
                    v.map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into())
                };
                out.push(Reason::Param {
                    name: n.clone(),
                    from: show(a.get(n)),
                    to: show(b.get(n)),
                });
            }
        }
    }
    for (p, d) in &cur.inputs {
        match prev.inputs.get(p) {
            None => out.push(Reason::InputAdded(p.clone())),
            Some(old) if old != d => out.push(Reason::InputChanged {
                path: p.clone(),
                from: old.clone(),
                to: d.clone(),
            }),
            _ => {}
        }
    }
    for p in prev.inputs.keys() {
        if !cur.inputs.contains_key(p) {
            out.push(Reason::InputRemoved(p.clone()));
        }
    }
    for (o, d) in &cur.upstream {
        match prev.upstream.get(o) {
            None => out.push(Reason::UpstreamAdded(o.clone())),
            Some(old) if old != d => out.push(Reason::UpstreamChanged(o.clone())),
            _ => {}
        }
    }
    for o in prev.upstream.keys() {
        if !cur.upstream.contains_key(o) {
            out.push(Reason::UpstreamRemoved(o.clone()));
        }
    }
    if out.is_empty() {
        out.push(Reason::NoCachedResult);
    }
    out
}

/// Says what changed in a task's plate-map slice, where both versions can be read (the old
/// one from the store, where the run that used it put it; `read` returns `None` otherwise).
pub fn refine_plate_map_reasons(reasons: &mut [Reason], read: impl Fn(&Digest) -> Option<Vec<u8>>) {
    use plateflow_contract::platemap::PlateMap;
    for r in reasons.iter_mut() {
        let Reason::InputChanged { path, from, to } = r else {
            continue;
        };
        let Some(rest) = path.strip_prefix("plate_map:") else {
            continue;
        };
        let scope = match rest.split_once('[') {
            Some((_, s)) => s.trim_end_matches(']').to_string(),
            None => "all plates".to_string(),
        };
        let parse = |d: &Digest| read(d).and_then(|b| PlateMap::parse("plate map", &b).ok());
        if let (Some(old), Some(new)) = (parse(from), parse(to)) {
            *r = Reason::PlateMapRows {
                scope,
                detail: PlateMap::describe_change(&old, &new),
            };
        }
    }
}

/// Whether a task runs: the one decision `plateflow run` and `--dry-run`/`explain` share.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheDecision {
    /// A stored result with intact outputs: the task is done without running.
    Hit(crate::db::CachedAction),
    Run(Vec<Reason>),
}

/// Decides a task from what is known of it: forced, its stored result (if any) and whether
/// its outputs are intact (`verify`), and the key parts recorded for it last time (`prev`,
/// asked for only when the reasons are needed).
pub fn decide(
    forced: bool,
    stored: Option<&crate::db::CachedAction>,
    verify: impl FnOnce(&crate::db::CachedAction) -> Result<(), String>,
    prev: impl FnOnce() -> Option<KeyParts>,
    cur: &KeyParts,
) -> CacheDecision {
    if forced {
        return CacheDecision::Run(vec![Reason::Forced]);
    }
    match stored.map(|a| (a, verify(a))) {
        Some((a, Ok(()))) => CacheDecision::Hit(a.clone()),
        Some((_, Err(bad))) => CacheDecision::Run(vec![Reason::CorruptOutput(bad)]),
        None => CacheDecision::Run(why_runs(prev().as_ref(), cur)),
    }
}

/// One line for progress and status: the first reasons, and how many more.
pub fn summarise(reasons: &[Reason]) -> String {
    plateflow_contract::listing::first_few(reasons.iter().map(Reason::to_string), 3, "; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plateflow_store::hash_bytes;

    fn parts() -> KeyParts {
        let mut k = KeyParts {
            kind: "command@1".into(),
            params: r#"{"outputs":["a.csv"],"run":"x"}"#.into(),
            ..Default::default()
        };
        k.fields.insert("plate".into(), "P1".into());
        k.inputs.insert("P1/A01.tif".into(), hash_bytes(b"img1"));
        k.upstream
            .insert("qc[plate=P1]/m.csv".into(), hash_bytes(b"m"));
        k
    }

    #[test]
    fn every_part_changes_the_key_and_is_explained() {
        let base = parts();
        let k0 = base.key();
        assert_eq!(k0, parts().key(), "keys are deterministic");

        let mut p = parts();
        p.params = r#"{"outputs":["a.csv"],"run":"y"}"#.into();
        assert_ne!(p.key(), k0);
        assert_eq!(
            why_runs(Some(&base), &p),
            vec![Reason::Param {
                name: "run".into(),
                from: "\"x\"".into(),
                to: "\"y\"".into()
            }]
        );

        let mut p = parts();
        p.kind = "command@2".into();
        assert_ne!(p.key(), k0);
        assert!(matches!(
            why_runs(Some(&base), &p)[0],
            Reason::KindVersion { .. }
        ));

        let mut p = parts();
        p.inputs
            .insert("P1/A01.tif".into(), hash_bytes(b"img1-changed"));
        assert_ne!(p.key(), k0);
        assert!(
            matches!(&why_runs(Some(&base), &p)[0], Reason::InputChanged { path, .. } if path == "P1/A01.tif")
        );

        let mut p = parts();
        p.inputs.insert("P1/A02.tif".into(), hash_bytes(b"img2"));
        assert_eq!(
            why_runs(Some(&base), &p),
            vec![Reason::InputAdded("P1/A02.tif".into())]
        );

        let mut p = parts();
        p.upstream
            .insert("qc[plate=P1]/m.csv".into(), hash_bytes(b"m2"));
        assert_ne!(p.key(), k0);
        assert_eq!(
            why_runs(Some(&base), &p),
            vec![Reason::UpstreamChanged("qc[plate=P1]/m.csv".into())]
        );

        let mut p = parts();
        p.fields.insert("plate".into(), "P2".into());
        assert_ne!(p.key(), k0);

        assert_eq!(why_runs(None, &base), vec![Reason::New]);
        assert_eq!(why_runs(Some(&base), &base), vec![Reason::NoCachedResult]);
    }
}
