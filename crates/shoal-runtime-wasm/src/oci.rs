//! Wasm OCI artifacts: push in the CNCF layout and pull the layouts found in the wild.
//!
//! Push writes a config of type `application/vnd.wasm.config.v0+json` and one `application/wasm`
//! layer, with the manifest `mediaType` written explicitly. Pull accepts image manifests (and
//! indexes, picking the `wasi`/`wasm` platform) whose layer is `application/wasm`, Spin's
//! `application/vnd.wasm.content.layer.v1+wasm` or runwasi's
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`. Registries on 127.0.0.0/8,
//! `::1` or `localhost` are spoken to over plain HTTP, as Docker does.
//!
//! Ordinary images whose layers are tars (plain or gzip) are accepted when one layer carries a
//! single `.wasm` file, as `FROM scratch` images built for platform `wasi/wasm` do.
//!
//! Pulls are bounded: a layer larger than the configured cap (by its descriptor's `size`, by
//! the bytes actually received, or once gunzipped) fails the pull instead of exhausting the
//! agent's memory, and a manifest index entry over [`MAX_MANIFEST_BYTES`] is not fetched.
//! oci-client reads a manifest response whole before handing it over, so a registry can still
//! make us buffer one oversized manifest; that one is refused after the fact.
//!
//! Not here: registry authentication (pulls and pushes are anonymous).

use std::borrow::Cow;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Error;

/// Media type of the CNCF Wasm artifact config.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the CNCF Wasm artifact layer.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Layer types accepted on pull.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    WASM_LAYER_MEDIA_TYPE,
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// Largest manifest accepted (as the distribution registry's own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a pull failed: the registry side (`ErrImagePull`) or the artifact's shape.
#[derive(Debug)]
pub(crate) enum PullError {
    Registry(String),
    Layout(String),
}

/// A fetched artifact: its manifest digest and its one Wasm layer.
#[derive(Debug)]
pub(crate) struct Pulled {
    pub manifest_digest: String,
    pub layer_digest: String,
    pub layer: Vec<u8>,
}

/// Parses an image reference (`registry/repo:tag`, `repo@sha256:...`; Docker Hub defaults).
pub(crate) fn parse_reference(image: &str) -> Result<Reference, Error> {
    image
        .parse::<Reference>()
        .map_err(|e| Error::InvalidReference {
            reference: image.to_string(),
            message: e.to_string(),
        })
}

/// Whether a registry host (`host[:port]`) is on the loopback and spoken to over plain HTTP.
fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client_for(reference: &Reference) -> Result<Client, String> {
    client_with(reference, &[])
}

/// A client for `reference`'s registry: plain HTTP for loopback registries and the `insecure`
/// ones (`host:port`, as Docker's `insecure-registries`), HTTPS otherwise. Fails (instead of
/// panicking, as `Client::new` does) where no trust roots can be loaded, as on a host without
/// CA certificates.
fn client_with(reference: &Reference, insecure: &[String]) -> Result<Client, String> {
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback_registry(&registry) || insecure.contains(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    })
    .map_err(|e| format!("cannot build a registry client: {}", error_chain(&e)))
}

/// Display of an error with its sources, so "connection refused" survives reqwest's wrapping.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes a Wasm binary as a CNCF Wasm artifact to `reference`; returns the manifest digest.
///
/// The config records `os` `wasip2` for a component and `wasip1` for a core module. Registries
/// on the loopback are spoken to over plain HTTP.
pub async fn push(file_bytes: Vec<u8>, reference: &str) -> Result<String, Error> {
    let image = parse_reference(reference)?;
    let client = client_for(&image).map_err(|message| Error::Registry {
        reference: reference.to_string(),
        message,
    })?;
    let registry_error = |e: oci_client::errors::OciDistributionError| Error::Registry {
        reference: reference.to_string(),
        message: error_chain(&e),
    };
    client
        .store_auth_if_needed(image.resolve_registry(), &RegistryAuth::Anonymous)
        .await;

    let layer_digest = sha256_digest(&file_bytes);
    let layer_size = file_bytes.len();
    let os = if crate::engine::is_component(&file_bytes) {
        "wasip2"
    } else {
        "wasip1"
    };
    let config = serde_json::json!({
        "created": jiff::Timestamp::now().to_string(),
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::Registry {
        reference: reference.to_string(),
        message: e.to_string(),
    })?;
    let config_digest = sha256_digest(&config_bytes);
    let config_size = config_bytes.len();

    client
        .push_blob(&image, file_bytes, &layer_digest)
        .await
        .map_err(registry_error)?;
    client
        .push_blob(&image, config_bytes, &config_digest)
        .await
        .map_err(registry_error)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": WASM_CONFIG_MEDIA_TYPE,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": WASM_LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Registry {
        reference: reference.to_string(),
        message: e.to_string(),
    })?;
    let manifest_digest = sha256_digest(&manifest_bytes);
    client
        .push_manifest_raw(&image, manifest_bytes, http_header(OCI_MANIFEST))
        .await
        .map_err(registry_error)?;
    tracing::info!(reference, digest = %manifest_digest, "pushed wasm artifact");
    Ok(manifest_digest)
}

fn http_header(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    /// Size in bytes of the content, as the manifest claims it.
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// `limit` for messages: "256 MiB" when a whole number of MiB, else "N-byte".
fn describe_limit(limit: u64) -> String {
    const MIB: u64 = 1 << 20;
    if limit >= MIB && limit.is_multiple_of(MIB) {
        format!("{} MiB", limit / MIB)
    } else {
        format!("{limit}-byte")
    }
}

/// An in-memory sink for `pull_blob` that refuses to grow past `limit` bytes, whatever size the
/// manifest claimed.
struct BoundedBuffer {
    bytes: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl BoundedBuffer {
    /// A buffer for at most `limit` bytes, with room for `expected` of them up front.
    fn new(limit: u64, expected: Option<u64>) -> Self {
        let capacity = expected.unwrap_or(0).min(limit);
        BoundedBuffer {
            bytes: Vec::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            limit,
            exceeded: false,
        }
    }
}

impl tokio::io::AsyncWrite for BoundedBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total = (this.bytes.len() as u64).saturating_add(buf.len() as u64);
        if total > this.limit {
            this.exceeded = true;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "blob exceeds the {} limit",
                describe_limit(this.limit)
            ))));
        }
        this.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Downloads one layer into memory, refusing one over `limit` bytes: up front by its declared
/// size, and while receiving in case the declaration lies.
async fn pull_layer(
    client: &Client,
    image: &Reference,
    layer: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>, PullError> {
    if let Some(size) = layer.size
        && size > limit
    {
        return Err(PullError::Registry(format!(
            "layer {} of {size} bytes exceeds the {} limit",
            layer.digest,
            describe_limit(limit)
        )));
    }
    let mut sink = BoundedBuffer::new(limit, layer.size);
    match client
        .pull_blob(image, layer.digest.as_str(), &mut sink)
        .await
    {
        Ok(()) => Ok(sink.bytes),
        Err(_) if sink.exceeded => Err(PullError::Registry(format!(
            "layer {} exceeds the {} limit (the registry sent more than {limit} bytes)",
            layer.digest,
            describe_limit(limit)
        ))),
        Err(e) => Err(PullError::Registry(error_chain(&e))),
    }
}

/// Parses a manifest or index, refusing one over [`MAX_MANIFEST_BYTES`].
fn parse_manifest(body: &[u8]) -> Result<Manifest, PullError> {
    if body.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(PullError::Layout(format!(
            "manifest of {} bytes exceeds the {} limit",
            body.len(),
            describe_limit(MAX_MANIFEST_BYTES)
        )));
    }
    serde_json::from_slice(body).map_err(|e| PullError::Layout(format!("malformed manifest: {e}")))
}

/// Fetches the artifact `reference` names: manifest (through an index if need be) and its Wasm
/// layer, digest-verified, with no layer over `max_layer_bytes` (compressed or not).
pub(crate) async fn pull(
    reference: &Reference,
    max_layer_bytes: u64,
    insecure: &[String],
) -> Result<Pulled, PullError> {
    let client = client_with(reference, insecure).map_err(PullError::Registry)?;
    let registry =
        |e: oci_client::errors::OciDistributionError| PullError::Registry(error_chain(&e));
    let accept = [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];
    let (body, mut manifest_digest) = client
        .pull_manifest_raw(reference, &RegistryAuth::Anonymous, &accept)
        .await
        .map_err(registry)?;
    let mut manifest = parse_manifest(&body)?;

    let mut by_digest = reference.clone();
    if let Some(entries) = manifest.manifests.as_ref() {
        let chosen = entries
            .iter()
            .find(|entry| {
                entry.platform.as_ref().is_some_and(|p| {
                    p.architecture == "wasm" && (p.os == "wasi" || p.os.starts_with("wasip"))
                })
            })
            .or(entries.first())
            .ok_or_else(|| PullError::Layout("image index lists no manifests".to_string()))?;
        if let Some(size) = chosen.size
            && size > MAX_MANIFEST_BYTES
        {
            return Err(PullError::Layout(format!(
                "manifest {} of {size} bytes exceeds the {} limit",
                chosen.digest,
                describe_limit(MAX_MANIFEST_BYTES)
            )));
        }
        by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            chosen.digest.clone(),
        );
        let (body, digest) = client
            .pull_manifest_raw(&by_digest, &RegistryAuth::Anonymous, &accept)
            .await
            .map_err(registry)?;
        manifest_digest = digest;
        manifest = parse_manifest(&body)?;
    }
    let layers = manifest.layers.unwrap_or_default();
    if let Some(layer) = layers
        .iter()
        .find(|layer| WASM_LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()))
    {
        let bytes = pull_layer(&client, &by_digest, layer, max_layer_bytes).await?;
        return Ok(Pulled {
            manifest_digest,
            layer_digest: layer.digest.clone(),
            layer: bytes,
        });
    }
    // An ordinary image (e.g. `FROM scratch` + `COPY app.wasm`): the topmost tar layer holding a
    // `.wasm` file wins.
    for layer in layers.iter().rev() {
        let gzip = match layer.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => false,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => true,
            _ => continue,
        };
        let bytes = pull_layer(&client, &by_digest, layer, max_layer_bytes).await?;
        if let Some(wasm) =
            wasm_from_tar_layer(&bytes, gzip, max_layer_bytes).map_err(PullError::Layout)?
        {
            return Ok(Pulled {
                manifest_digest,
                layer_digest: sha256_digest(&wasm),
                layer: wasm,
            });
        }
    }
    let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
    Err(PullError::Layout(format!(
        "no WebAssembly layer in manifest (mediaType {:?}, layer types {types:?})",
        manifest.media_type.as_deref().unwrap_or("")
    )))
}

/// The one `.wasm` regular file of a (possibly gzipped) tar layer; an error if there are
/// several, or if the layer decompresses to more than `max_bytes`.
pub(crate) fn wasm_from_tar_layer(
    layer: &[u8],
    gzip: bool,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, String> {
    let tar: Cow<'_, [u8]> = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(layer)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decompress image layer: {e}"))?;
        if out.len() as u64 > max_bytes {
            return Err(format!(
                "image layer decompresses to more than the {} limit",
                describe_limit(max_bytes)
            ));
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(layer)
    };
    let mut found: Option<(String, Vec<u8>)> = None;
    let mut long_name: Option<String> = None;
    let mut offset = 0;
    while offset + 512 <= tar.len() {
        let header = &tar[offset..offset + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size = usize::from_str_radix(field(124..136).trim(), 8)
            .map_err(|_| "malformed tar header in image layer".to_string())?;
        let data_start = offset + 512;
        let data_end = data_start
            .checked_add(size)
            .filter(|end| *end <= tar.len())
            .ok_or_else(|| "truncated tar entry in image layer".to_string())?;
        let data = &tar[data_start..data_end];
        let mut name = field(0..100);
        if &header[257..262] == b"ustar" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match header[156] {
            b'L' => {
                long_name = Some(
                    String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            b'x' => {
                // A pax header: only its `path` record matters here.
                let records = String::from_utf8_lossy(data);
                long_name = records
                    .lines()
                    .find_map(|line| line.split_once(" path=").map(|(_, path)| path.to_string()));
            }
            b'0' | 0 => {
                let name = long_name.take().unwrap_or(name);
                if name.ends_with(".wasm") {
                    if let Some((first, _)) = &found {
                        return Err(format!(
                            "image layer carries several .wasm files ({first}, {name})"
                        ));
                    }
                    found = Some((name, data.to_vec()));
                }
            }
            _ => long_name = None,
        }
        offset = data_start + size.div_ceil(512) * 512;
    }
    Ok(found.map(|(_, bytes)| bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;

    #[test]
    fn loopback_registries_use_http() {
        for (registry, expected) in [
            ("127.0.0.1:5000", true),
            ("127.3.2.1", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
            ("index.docker.io", false),
        ] {
            assert_eq!(is_loopback_registry(registry), expected, "{registry}");
        }
    }

    /// One ustar entry: a header and its data padded to 512 bytes.
    fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        header[156] = b'0';
        header[257..262].copy_from_slice(b"ustar");
        let mut entry = header.to_vec();
        entry.extend_from_slice(data);
        entry.resize(entry.len().div_ceil(512) * 512, 0);
        entry
    }

    #[test]
    fn tar_layers_yield_their_one_wasm_file() {
        let mut tar = tar_entry("etc/config.toml", b"x = 1");
        tar.extend(tar_entry("app/main.wasm", b"\0asm\x01\0\0\0"));
        tar.extend([0u8; 1024]);
        assert_eq!(
            wasm_from_tar_layer(&tar, false, LIMIT).expect("valid tar"),
            Some(b"\0asm\x01\0\0\0".to_vec())
        );

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert!(
            wasm_from_tar_layer(&gz, true, LIMIT)
                .expect("valid")
                .is_some()
        );

        let none = tar_entry("etc/config.toml", b"x = 1");
        assert_eq!(
            wasm_from_tar_layer(&none, false, LIMIT).expect("valid"),
            None
        );

        let mut two = tar.clone();
        two.truncate(tar.len() - 1024);
        two.extend(tar_entry("other.wasm", b"\0asm"));
        assert!(wasm_from_tar_layer(&two, false, LIMIT).is_err());
    }

    #[test]
    fn gzip_layers_are_bounded_once_decompressed() {
        // 4 MiB of zeros compress to a few KiB: a small gzip bomb.
        let mut tar = tar_entry("app/main.wasm", &vec![0u8; 4 << 20]);
        tar.extend([0u8; 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert!(gz.len() < 64 * 1024, "{} bytes compressed", gz.len());

        let error = wasm_from_tar_layer(&gz, true, 1 << 20).expect_err("over the limit");
        assert_eq!(
            error,
            "image layer decompresses to more than the 1 MiB limit"
        );
        // Exactly at the limit is fine.
        let exact = tar.len() as u64;
        assert!(
            wasm_from_tar_layer(&gz, true, exact)
                .expect("at the limit")
                .is_some()
        );
        assert!(wasm_from_tar_layer(&gz, true, exact - 1).is_err());
    }

    #[tokio::test]
    async fn bounded_buffer_fails_past_its_limit() {
        use tokio::io::AsyncWriteExt;

        let mut sink = BoundedBuffer::new(10, Some(1 << 40));
        assert!(
            sink.bytes.capacity() <= 16,
            "capacity follows the limit, not the claim"
        );
        sink.write_all(b"01234").await.expect("within the limit");
        sink.write_all(b"56789").await.expect("up to the limit");
        assert!(!sink.exceeded);
        let error = sink.write_all(b"x").await.expect_err("past the limit");
        assert!(
            error.to_string().contains("exceeds the 10-byte limit"),
            "{error}"
        );
        assert!(sink.exceeded);
        assert_eq!(sink.bytes, b"0123456789");

        let mut sink = BoundedBuffer::new(256 << 20, None);
        sink.write_all(&[1u8; 4096]).await.expect("small");
        assert_eq!(sink.bytes.len(), 4096);
    }

    #[test]
    fn limits_are_described_in_mib() {
        assert_eq!(describe_limit(crate::DEFAULT_MAX_LAYER_BYTES), "256 MiB");
        assert_eq!(describe_limit(MAX_MANIFEST_BYTES), "4 MiB");
        assert_eq!(describe_limit(1000), "1000-byte");
    }

    #[test]
    fn descriptors_carry_their_size() {
        let manifest = parse_manifest(
            br#"{"layers":[{"mediaType":"application/wasm","digest":"sha256:ab","size":300000000}]}"#,
        )
        .expect("valid manifest");
        let layers = manifest.layers.unwrap_or_default();
        assert_eq!(layers[0].size, Some(300_000_000));
        assert!(parse_manifest(&vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize]).is_err());
    }

    #[tokio::test]
    async fn layers_declared_over_the_limit_are_refused_before_download() {
        // The registry is never contacted: the declared size alone fails the pull.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference = parse_reference("127.0.0.1:1/big:v1").expect("valid");
        let client = client_for(&reference).expect("client");
        let layer = Descriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.to_string(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: Some(300 << 20),
            platform: None,
        };
        match pull_layer(&client, &reference, &layer, crate::DEFAULT_MAX_LAYER_BYTES).await {
            Err(PullError::Registry(message)) => assert_eq!(
                message,
                format!(
                    "layer sha256:{} of 314572800 bytes exceeds the 256 MiB limit",
                    "a".repeat(64)
                )
            ),
            other => panic!("expected a size error, got {other:?}"),
        }
    }

    #[test]
    fn references_parse_with_docker_defaults() {
        let reference = parse_reference("127.0.0.1:5000/hello:v1").expect("valid");
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "hello");
        assert_eq!(reference.tag(), Some("v1"));
        assert!(parse_reference("UPPER/Case:v1").is_err());
        assert!(parse_reference("").is_err());
    }
}
