//! The local image store: Wasm layers by digest plus a small reference index, on disk.
//!
//! Layout under `data_dir/images`: `blobs/sha256/<hex>` holds each Wasm layer, and `index.json`
//! maps a normalized reference (`registry/repo:tag`) to its manifest digest and a manifest digest
//! to its layer digest. `imagePullPolicy: IfNotPresent` resolves through the index without
//! touching the network. Writes go to a temporary file that is fsynced and renamed into place
//! (and the directory fsynced), so a crash never leaves a torn blob or index. A blob is checked
//! against its digest the first time this process resolves it; one that does not match is
//! removed and treated as absent, so the next pull fetches it again. Garbage collection of unused
//! blobs is not done here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256, Sha512};

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::oci::Pulled;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Normalized reference -> manifest digest.
    refs: BTreeMap<String, String>,
    /// Manifest digest -> layer digest.
    manifests: BTreeMap<String, String>,
    /// Normalized reference -> `repo@digest` image id.
    image_ids: BTreeMap<String, String>,
}

/// One image of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredImage {
    /// `registry/repo@sha256:...`.
    pub id: String,
    /// Normalized references (`registry/repo:tag`).
    pub references: Vec<String>,
    pub layer_digest: String,
}

impl Index {
    /// The image `id` with the references that resolve to it (those whose layer is known);
    /// `None` when it has none.
    fn image(&self, id: &str) -> Option<StoredImage> {
        let mut found: Option<StoredImage> = None;
        for (reference, _) in self.image_ids.iter().filter(|(_, i)| *i == id) {
            let Some(layer) = self.refs.get(reference).and_then(|m| self.manifests.get(m)) else {
                continue;
            };
            found
                .get_or_insert_with(|| StoredImage {
                    id: id.to_owned(),
                    references: Vec::new(),
                    layer_digest: layer.clone(),
                })
                .references
                .push(reference.clone());
        }
        found
    }
}

pub(crate) struct ImageStore {
    root: PathBuf,
    index: Mutex<Index>,
    /// Layer digests whose blob this process checked against (or wrote from) its digest.
    verified: Mutex<HashSet<String>>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` durably: a temporary sibling is written and fsynced, renamed into
/// place, and the directory fsynced, so after a crash `path` is either absent, its old content
/// or all of `bytes`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(
        ".tmp-{}-{unique}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io_error(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_error(path)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable. Not every filesystem can sync a directory, and the data
    // is already safe in the file, so a failure here is only logged.
    if let Err(e) = std::fs::File::open(parent).and_then(|dir| dir.sync_all()) {
        tracing::debug!(dir = %parent.display(), error = %e, "cannot sync directory");
    }
    Ok(())
}

/// Whether the file at `path` hashes to `digest` (`sha256:<hex>` or `sha512:<hex>`); an unknown
/// algorithm is an error.
pub(crate) fn file_matches_digest(path: &Path, digest: &str) -> std::io::Result<bool> {
    fn hash<D: Digest>(path: &Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = D::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    }
    let actual = match digest.split_once(':') {
        Some(("sha256", _)) => hash::<Sha256>(path)?,
        Some(("sha512", _)) => hash::<Sha512>(path)?,
        _ => {
            return Err(std::io::Error::other(format!(
                "unsupported digest {digest:?}"
            )));
        }
    };
    Ok(digest
        .split_once(':')
        .is_some_and(|(_, expected)| expected.eq_ignore_ascii_case(&actual)))
}

impl ImageStore {
    pub(crate) fn open(data_dir: &Path) -> Result<Self, Error> {
        let root = data_dir.join("images");
        std::fs::create_dir_all(root.join("blobs").join("sha256")).map_err(io_error(&root))?;
        let index_path = root.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %index_path.display(), error = %e, "ignoring corrupt image index");
                Index::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(source) => {
                return Err(Error::Io {
                    path: index_path,
                    source,
                });
            }
        };
        Ok(ImageStore {
            root,
            index: Mutex::new(index),
            verified: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs").join("sha256").join(hex)
    }

    /// The image id of a reference already pulled, if its layer is still on disk intact.
    /// Blocking: the first resolve of a layer in this process hashes its blob.
    #[cfg(test)]
    pub(crate) fn resolve(&self, reference: &str) -> Option<String> {
        let (image_id, layer) = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let image_id = index.image_ids.get(reference)?.clone();
            let manifest = index.refs.get(reference)?;
            (image_id, index.manifests.get(manifest)?.clone())
        };
        self.blob_intact(&layer).then_some(image_id)
    }

    /// Whether the blob of `digest` is on disk with the content its digest names. A blob that
    /// does not match (e.g. left empty by a crash before blobs were fsynced) is removed.
    pub(crate) fn blob_intact(&self, digest: &str) -> bool {
        let path = self.blob_path(digest);
        let verified = || {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(digest)
        };
        if verified() {
            return path.is_file();
        }
        match file_matches_digest(&path, digest) {
            Ok(true) => {
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.to_string());
                true
            }
            Ok(false) => {
                tracing::warn!(blob = %path.display(), digest, "image blob does not match its digest; it will be pulled again");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(blob = %path.display(), error = %e, "cannot remove corrupt image blob");
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(blob = %path.display(), error = %e, "cannot check image blob");
                false
            }
        }
    }

    /// The layer digest of an image id (`repo@sha256:...`).
    pub(crate) fn layer_for_image_id(&self, image_id: &str) -> Option<String> {
        let (_, digest) = image_id.rsplit_once('@')?;
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        index.manifests.get(digest).cloned()
    }

    /// Every image id with the references that resolve to it and its layer digest.
    pub(crate) fn list(&self) -> Vec<StoredImage> {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let ids: BTreeSet<&String> = index.image_ids.values().collect();
        ids.into_iter().filter_map(|id| index.image(id)).collect()
    }

    /// The reference key (`registry/repo:tag`) or image id an image answers to. Called for
    /// every container start: it reads only that image's entries.
    pub(crate) fn find(&self, image: &str) -> Option<StoredImage> {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        match index.image_ids.get(image) {
            Some(id) => index
                .image(id)
                .filter(|found| found.references.iter().any(|r| r == image)),
            None => index.image(image),
        }
    }

    /// Forgets an image id or reference key: every reference to it leaves the index. The blob
    /// stays until garbage collection. Blocking (fsyncs the index).
    pub(crate) fn remove(&self, image: &str) -> Result<bool, Error> {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let doomed: Vec<String> = index
            .image_ids
            .iter()
            .filter(|(reference, id)| *id == image || *reference == image)
            .map(|(reference, _)| reference.clone())
            .collect();
        if doomed.is_empty() {
            return Ok(false);
        }
        for reference in &doomed {
            index.image_ids.remove(reference);
            index.refs.remove(reference);
        }
        let bytes = serde_json::to_vec_pretty(&*index).map_err(|e| Error::Io {
            path: self.root.join("index.json"),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.root.join("index.json"), &bytes)?;
        Ok(true)
    }

    /// Stores a pulled artifact and records its reference; returns the image id. Blocking (it
    /// fsyncs the blob and the index).
    pub(crate) fn store(&self, reference: &Reference, pulled: &Pulled) -> Result<String, Error> {
        if !self.blob_intact(&pulled.layer_digest) {
            let blob = self.blob_path(&pulled.layer_digest);
            write_atomic(&blob, &pulled.layer)?;
            // The bytes were digest-checked by the pull (or hashed to make the digest).
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pulled.layer_digest.clone());
        }
        let image_id = format!(
            "{}/{}@{}",
            reference.registry(),
            reference.repository(),
            pulled.manifest_digest
        );
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let key = reference.whole();
        index
            .refs
            .insert(key.clone(), pulled.manifest_digest.clone());
        index
            .manifests
            .insert(pulled.manifest_digest.clone(), pulled.layer_digest.clone());
        index.image_ids.insert(key, image_id.clone());
        let bytes = serde_json::to_vec_pretty(&*index).map_err(|e| Error::Io {
            path: self.root.join("index.json"),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.root.join("index.json"), &bytes)?;
        Ok(image_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(layer: &[u8]) -> Pulled {
        Pulled {
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            layer_digest: format!("sha256:{}", hex::encode(Sha256::digest(layer))),
            layer: layer.to_vec(),
        }
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_treated_as_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let reference: Reference = "127.0.0.1:5000/hello:v1".parse().expect("reference");
        let artifact = pulled(b"\0asm\x01\0\0\0");
        let image_id = store.store(&reference, &artifact).expect("store");
        assert_eq!(store.resolve(&reference.whole()), Some(image_id.clone()));

        // As a crash before the rename reached disk would leave it: an empty blob.
        let blob = store.blob_path(&artifact.layer_digest);
        std::fs::write(&blob, b"").expect("truncate");
        let reopened = ImageStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.resolve(&reference.whole()), None);
        assert!(!blob.exists(), "the corrupt blob is removed");

        // Pulling again rewrites it.
        assert_eq!(
            reopened.store(&reference, &artifact).expect("store"),
            image_id
        );
        assert_eq!(std::fs::read(&blob).expect("blob"), artifact.layer);
        assert_eq!(reopened.resolve(&reference.whole()), Some(image_id));
    }

    #[test]
    fn atomic_writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("file");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
    }
}
