//! Opening a container's volumes on the host so that a guest cannot redirect them.
//!
//! A guest may create symlinks in the volumes it can write (emptyDir, hostPath), and the same
//! volume can later be mounted with a `subPath` (by another container, or after a restart). So a
//! subPath is opened one component at a time with `O_NOFOLLOW`, starting from a descriptor of the
//! volume's directory: a symlink or a non-directory is refused, a missing component is created
//! (as the kubelet does) with `mkdirat` relative to its parent. The runtime is handed
//! `/proc/self/fd/<n>` of the final `O_PATH` descriptor, which names that very directory whatever
//! happens to the path afterwards; [`ResolvedMounts::fds`] keeps the descriptors open and must
//! outlive the container (the Wasm runtime opens its preopens again inside the container's task).
//! hostPath volumes are opened the same way and refused when they overlap the agent's data
//! directory, which holds compiled native code and every pod's volumes. ConfigMap and Secret
//! files are written without following symlinks either.
//!
//! Linux only (`/proc/self/fd`), and only for runtimes that open the mounts in the agent's own
//! process, as the Wasm runtime does.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;
use shoal_runtime::Mount;

use crate::spec::{ConfigError, PlannedMount, VolumeSource};

/// Flags of every directory descriptor: a handle on the directory, not an open for reading.
const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// A container's mounts and the descriptors their `/proc/self/fd/<n>` paths name.
#[derive(Debug, Default)]
pub(crate) struct ResolvedMounts {
    pub mounts: Vec<Mount>,
    /// Keeps each mount's path valid: drop only once the container is gone.
    pub fds: Vec<OwnedFd>,
}

/// Opens each planned mount's directory (creating missing subPath directories) and refuses
/// hostPath volumes that overlap `data_dir` (canonical).
pub(crate) fn resolve_mounts(
    planned: &[PlannedMount],
    data_dir: &Path,
) -> Result<ResolvedMounts, ConfigError> {
    let mut resolved = ResolvedMounts::default();
    for plan in planned {
        let root = open_volume_root(plan, data_dir)?;
        let dir = open_sub_path(root, plan)?;
        resolved.mounts.push(Mount {
            host_path: fd_path(&dir),
            container_path: plan.container_path.clone(),
            read_only: plan.read_only,
        });
        resolved.fds.push(dir);
    }
    Ok(resolved)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_volume_root(plan: &PlannedMount, data_dir: &Path) -> Result<OwnedFd, ConfigError> {
    match &plan.source {
        // The agent made this directory and no guest sees its parent: only its last component
        // could be swapped, and even that is not followed.
        VolumeSource::Pod(path) => {
            rustix::fs::openat(CWD, path, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                .and_then(directory)
                .map_err(|e| {
                    ConfigError::Unsupported(format!(
                        "cannot open the directory of volume {:?}: {e}",
                        plan.volume
                    ))
                })
        }
        // The path is the pod author's: symlinks in it are followed, as the kubelet does, and
        // the directory actually opened is what must stay out of the data directory.
        VolumeSource::Host(path) => {
            let fd = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()).map_err(|e| {
                ConfigError::Unsupported(format!(
                    "hostPath {} of volume {:?} cannot be opened as a directory: {e}",
                    path.display(),
                    plan.volume
                ))
            })?;
            let opened = std::fs::read_link(fd_path(&fd)).map_err(|e| {
                ConfigError::Unsupported(format!(
                    "cannot resolve hostPath {} of volume {:?}: {e}",
                    path.display(),
                    plan.volume
                ))
            })?;
            if opened.starts_with(data_dir) || data_dir.starts_with(&opened) {
                return Err(ConfigError::Unsupported(format!(
                    "hostPath {} of volume {:?} overlaps the node agent's data directory {}",
                    path.display(),
                    plan.volume,
                    data_dir.display()
                )));
            }
            Ok(fd)
        }
    }
}

/// Walks `plan`'s subPath down from `root` without following symlinks.
fn open_sub_path(root: OwnedFd, plan: &PlannedMount) -> Result<OwnedFd, ConfigError> {
    let mut dir = root;
    for component in &plan.sub_components {
        dir = open_child_dir(&dir, OsStr::new(component)).map_err(|e| {
            if e == Errno::NOTDIR || e == Errno::LOOP {
                ConfigError::Unsupported(format!(
                    "subPath {:?} of volume {:?} is not a directory inside the volume",
                    plan.sub_path, plan.volume
                ))
            } else {
                ConfigError::Unsupported(format!(
                    "cannot open subPath {:?} of volume {:?}: {e}",
                    plan.sub_path, plan.volume
                ))
            }
        })?;
    }
    Ok(dir)
}

/// Opens directory `name` of `parent`, creating it if absent. A symlink or anything but a
/// directory is `ENOTDIR` (or `ELOOP`).
fn open_child_dir(parent: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let parent = parent.as_fd();
    let open = || rustix::fs::openat(parent, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty());
    let fd = match open() {
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            open()?
        }
        other => other?,
    };
    directory(fd)
}

/// `fd` if it is a directory, else `ENOTDIR`: `O_PATH | O_NOFOLLOW` can open a symlink itself.
fn directory(fd: OwnedFd) -> Result<OwnedFd, Errno> {
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        Ok(fd)
    } else {
        Err(Errno::NOTDIR)
    }
}

/// Writes ConfigMap and Secret volume files under `volumes_dir/<volume>/`, creating the
/// directories on the way and following no symlink below `volumes_dir`.
pub(crate) fn write_projected(
    volumes_dir: &Path,
    files: &[(String, PathBuf, Vec<u8>)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(volumes_dir)?;
    for (volume, relative, content) in files {
        let mut names: Vec<&OsStr> = vec![OsStr::new(volume)];
        for component in relative.components() {
            match component {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} is not a relative path", relative.display()),
                    ));
                }
            }
        }
        let Some((file, parents)) = names.split_last() else {
            continue;
        };
        let mut dir = rustix::fs::openat(CWD, volumes_dir, DIR_FLAGS, Mode::empty())?;
        for name in parents {
            dir = open_child_dir(&dir, name)?;
        }
        let fd = rustix::fs::openat(
            dir.as_fd(),
            *file,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        std::fs::File::from(fd).write_all(content)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn plan(source: VolumeSource, sub_path: &str) -> PlannedMount {
        PlannedMount {
            volume: "data".to_owned(),
            source,
            sub_path: sub_path.to_owned(),
            sub_components: crate::spec::sub_path_components(sub_path).expect("sub path"),
            container_path: "/data".to_owned(),
            read_only: false,
        }
    }

    fn entries(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn resolve_one(plan: PlannedMount, data_dir: &Path) -> Result<ResolvedMounts, String> {
        resolve_mounts(&[plan], data_dir).map_err(|e| e.to_string())
    }

    #[test]
    fn sub_paths_do_not_follow_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let data_dir = base.join("agent");
        let volume = data_dir.join("pods/u1/volumes/data");
        std::fs::create_dir_all(volume.join("real/nested")).expect("mkdir");
        std::fs::write(volume.join("real/file"), b"x").expect("write");
        std::fs::write(base.join("outside-secret"), b"s").expect("write");
        symlink("../../../../../../../../..", volume.join("esc")).expect("symlink");
        symlink("real", volume.join("inner-link")).expect("symlink");
        let source = || VolumeSource::Pod(volume.clone());

        for sub in ["esc", "esc/etc", "inner-link", "real/file"] {
            let err = resolve_one(plan(source(), sub), &data_dir).expect_err(sub);
            assert_eq!(
                err,
                format!("subPath {sub:?} of volume \"data\" is not a directory inside the volume")
            );
        }

        let resolved = resolve_one(plan(source(), "real"), &data_dir).expect("real");
        let host_path = &resolved.mounts[0].host_path;
        assert!(host_path.starts_with("/proc/self/fd"), "{host_path:?}");
        assert_eq!(entries(host_path), ["file", "nested"]);
        // The path names the directory opened, even if the volume's path changes afterwards.
        std::fs::rename(volume.join("real"), volume.join("moved")).expect("rename");
        symlink("/", volume.join("real")).expect("symlink");
        assert_eq!(entries(host_path), ["file", "nested"]);
        drop(resolved);

        let resolved = resolve_one(plan(source(), "./moved//nested"), &data_dir).expect("nested");
        assert_eq!(entries(&resolved.mounts[0].host_path), Vec::<String>::new());

        // A missing subPath is created inside the volume.
        let resolved = resolve_one(plan(source(), "new/dir"), &data_dir).expect("created");
        std::fs::write(resolved.mounts[0].host_path.join("f"), b"y").expect("write");
        assert_eq!(entries(&volume.join("new/dir")), ["f"]);

        // No subPath: the volume itself.
        let resolved = resolve_one(plan(source(), ""), &data_dir).expect("whole");
        assert_eq!(
            entries(&resolved.mounts[0].host_path),
            ["esc", "inner-link", "moved", "new", "real"]
        );

        // The volume directory itself swapped for a symlink is refused too.
        let swapped = data_dir.join("pods/u1/volumes/swapped");
        symlink(&base, &swapped).expect("symlink");
        let err = resolve_one(plan(VolumeSource::Pod(swapped), ""), &data_dir).expect_err("root");
        assert!(
            err.starts_with("cannot open the directory of volume"),
            "{err}"
        );
    }

    #[test]
    fn host_paths_stay_out_of_the_data_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let data_dir = base.join("agent");
        std::fs::create_dir_all(data_dir.join("pods")).expect("mkdir");
        std::fs::create_dir_all(base.join("shared/sub")).expect("mkdir");
        symlink(data_dir.join("pods"), base.join("sneaky")).expect("symlink");
        symlink("/", base.join("shared/esc")).expect("symlink");

        for refused in [data_dir.join("pods"), base.clone(), base.join("sneaky")] {
            let err = resolve_one(plan(VolumeSource::Host(refused.clone()), ""), &data_dir)
                .expect_err("overlap");
            assert!(
                err.contains("overlaps the node agent's data directory"),
                "{refused:?}: {err}"
            );
        }

        let host = VolumeSource::Host(base.join("shared"));
        let resolved = resolve_one(plan(host.clone(), ""), &data_dir).expect("shared");
        assert_eq!(entries(&resolved.mounts[0].host_path), ["esc", "sub"]);
        resolve_one(plan(host.clone(), "sub"), &data_dir).expect("sub");
        let err = resolve_one(plan(host, "esc"), &data_dir).expect_err("esc");
        assert!(
            err.contains("is not a directory inside the volume"),
            "{err}"
        );

        let err = resolve_one(
            plan(VolumeSource::Host(base.join("missing")), ""),
            &data_dir,
        )
        .expect_err("missing");
        assert!(err.contains("cannot be opened as a directory"), "{err}");
    }

    #[test]
    fn projected_files_do_not_follow_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = tmp.path().join("volumes");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        let file =
            |volume: &str, path: &str| (volume.to_owned(), PathBuf::from(path), b"v".to_vec());

        write_projected(&volumes, &[file("cfg", "a"), file("cfg", "dir/b")]).expect("write");
        assert_eq!(
            std::fs::read(volumes.join("cfg/dir/b")).expect("read"),
            b"v"
        );

        symlink(&outside, volumes.join("cfg/link")).expect("symlink");
        symlink(outside.join("target"), volumes.join("cfg/file-link")).expect("symlink");
        write_projected(&volumes, &[file("cfg", "link/x")]).expect_err("dir symlink");
        write_projected(&volumes, &[file("cfg", "file-link")]).expect_err("file symlink");
        assert_eq!(entries(&outside), Vec::<String>::new());
    }
}
