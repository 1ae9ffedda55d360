//! Separate hosts on one machine: network namespaces joined by a bridge, each with its own
//! address in `10.99.0.0/24`, made by the test and deleted when it ends. Nothing of it is
//! visible from the machine's own network namespace (no route, no address there), so a wrong
//! address can only fail the test, never send a packet off the machine.
//!
//! `Lan` runs real `shoal` processes inside the hosts (`ip netns exec`), cuts hosts off from
//! each other with nftables rules inside a host's namespace (a partition that still lets the
//! test's client host reach both sides), and runs client code or commands from a dedicated
//! client host. Requires root, `ip` (iproute2) and `nft`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};

/// The client host's index: it runs kubectl and the test's own API clients.
pub const CLIENT: u8 = 100;

/// Hosts on one bridge, in network namespaces of their own.
pub struct Lan {
    prefix: String,
    hosts: Vec<u8>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Lan {
    /// Hosts `1..=n` and the client host, all up and reachable from each other.
    pub fn new(n: u8) -> Result<Lan> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "shoal{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lan = Lan {
            prefix,
            hosts: Vec::new(),
        };
        let bridge = lan.bridge_ns();
        run(&["ip", "netns", "add", &bridge])?;
        run(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &bridge, "link", "set", "br0", "up"])?;
        for i in (1..=n).chain([CLIENT]) {
            lan.add_host(i)?;
        }
        Ok(lan)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: u8) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// The address of host `i`.
    pub fn ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, i)
    }

    fn add_host(&mut self, i: u8) -> Result<()> {
        let ns = self.ns(i);
        let bridge = self.bridge_ns();
        let port = format!("v{i}");
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        run(&[
            "ip", "-n", &bridge, "link", "set", &port, "master", "br0", "up",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.ip(i)),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        self.hosts.push(i);
        Ok(())
    }

    /// A command that runs `program` inside host `i`.
    pub fn command(&self, i: u8, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(program);
        c
    }

    /// Runs kubectl from the client host with `kubeconfig` against `server`.
    pub fn kubectl(&self, kubeconfig: &Path, server: &str, args: &[&str]) -> Result<Output> {
        self.command(CLIENT, "kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--server")
            .arg(server)
            .arg("--request-timeout=10s")
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Cuts host `i` off from hosts `others` (both directions); the client host still reaches
    /// it. Undone by [`Lan::heal`].
    pub fn partition(&self, i: u8, others: &[u8]) -> Result<()> {
        let set: Vec<String> = others.iter().map(|o| self.ip(*o).to_string()).collect();
        let set = set.join(", ");
        nft(
            &self.ns(i),
            &format!(
                "table inet shoal_partition {{\n  chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n  chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n}}\n"
            ),
        )
    }

    /// Removes host `i`'s partition rules.
    pub fn heal(&self, i: u8) -> Result<()> {
        nft(&self.ns(i), "delete table inet shoal_partition\n")
    }

    /// Starts `f` on a thread whose sockets live in host `i`'s namespace.
    pub fn spawn_within<T: Send + 'static>(
        &self,
        i: u8,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = PathBuf::from("/var/run/netns").join(self.ns(i));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the network namespace")?;
            f()
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Processes still inside keep a namespace alive but unreachable; the owners kill them.
        for i in self.hosts.clone() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns()])
            .status();
    }
}

/// A `shoal` process inside one host, with its log file; killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
    pub host: u8,
    args: Vec<String>,
}

impl Proc {
    /// Starts `shoal ARGS` inside host `host`, logging to `log`.
    pub fn start(lan: &Lan, host: u8, args: &[String], log: &Path) -> Result<Proc> {
        let mut p = Proc {
            child: None,
            log: log.to_owned(),
            host,
            args: args.to_vec(),
        };
        p.spawn(lan)?;
        Ok(p)
    }

    fn spawn(&mut self, lan: &Lan) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = lan
            .command(self.host, crate::shoal_bin())
            .args(&self.args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting shoal")?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the same command again (after `kill9` or an exit).
    pub fn restart(&mut self, lan: &Lan) -> Result<()> {
        if self.child.is_some() {
            bail!("still running");
        }
        self.spawn(lan)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Waits for the process to end (bounded).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let status = crate::wait_until("the process to exit", timeout, || self.exited())?;
        self.child = None;
        Ok(status)
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
