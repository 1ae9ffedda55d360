//! The local image store: Wasm layers by digest plus a small reference index, on disk.
//!
//! Layout under `data_dir/images`: `blobs/sha256/<hex>` holds each Wasm layer, and `index.json`
//! maps a normalized reference (`registry/repo:tag`) to its manifest digest and a manifest digest
//! to its layer digest. `imagePullPolicy: IfNotPresent` resolves through the index without
//! touching the network. Writes go to a temporary file renamed into place, so a crash never
//! leaves a torn blob or index. Garbage collection of unused blobs is not done here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

pub(crate) struct ImageStore {
    root: PathBuf,
    index: Mutex<Index>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
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
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
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
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs").join("sha256").join(hex)
    }

    /// The image id of a reference already pulled, if its layer is still on disk.
    pub(crate) fn resolve(&self, reference: &str) -> Option<String> {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let image_id = index.image_ids.get(reference)?;
        let manifest = index.refs.get(reference)?;
        let layer = index.manifests.get(manifest)?;
        self.blob_path(layer).is_file().then(|| image_id.clone())
    }

    /// The layer digest of an image id (`repo@sha256:...`).
    pub(crate) fn layer_for_image_id(&self, image_id: &str) -> Option<String> {
        let (_, digest) = image_id.rsplit_once('@')?;
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        index.manifests.get(digest).cloned()
    }

    /// Stores a pulled artifact and records its reference; returns the image id.
    pub(crate) fn store(&self, reference: &Reference, pulled: &Pulled) -> Result<String, Error> {
        let blob = self.blob_path(&pulled.layer_digest);
        if !blob.is_file() {
            write_atomic(&blob, &pulled.layer)?;
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
