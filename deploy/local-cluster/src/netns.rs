//! Hosts of their own: with `up --netns PREFIX`, every keeper and replica
//! runs in a network namespace `PREFIX-NAME` with one address on a private
//! /24, joined by a bridge `PREFIXbr` that also carries this host's
//! address `.1` (from which clients and the health checks reach them).
//! Links between two processes are cut with blackhole routes inside both
//! namespaces (packets vanish, as in a real partition) and healed by
//! removing them. Everything here is created by `up` and removed by
//! `down`; nothing else on the machine is touched. Needs root (or
//! CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.

use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The namespaces' layout, as `cluster.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Prefix of namespace and interface names (at most 8 characters).
    pub prefix: String,
    /// First three octets of the /24, e.g. `10.213.7`.
    pub subnet: String,
}

/// One host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub namespace: String,
    /// Its address on the bridge.
    pub address: String,
    /// Short index for interface names.
    pub index: usize,
}

impl Layout {
    /// Checks the prefix and subnet before anything is created.
    pub fn new(prefix: &str, subnet: &str) -> anyhow::Result<Self> {
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            bail!("--netns must be 1 to 8 lowercase letters or digits");
        }
        let octets: Vec<&str> = subnet.split('.').collect();
        if octets.len() != 3 || octets.iter().any(|o| o.parse::<u8>().is_err()) {
            bail!("--netns-subnet must be three octets such as 10.213.7");
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            subnet: subnet.to_owned(),
        })
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The address this host has on the bridge.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// The host for process `name`, the `index`-th (from 0) with a
    /// namespace.
    pub fn host(&self, name: &str, index: usize) -> Host {
        Host {
            namespace: format!("{}-{name}", self.prefix),
            address: format!("{}.{}", self.subnet, 10 + index),
            index,
        }
    }

    /// Creates the bridge and every host (after removing leftovers of an
    /// earlier run with the same prefix).
    pub fn create(&self, hosts: &[Host]) -> anyhow::Result<()> {
        self.destroy(hosts);
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for host in hosts {
            let veth = format!("{}v{}", self.prefix, host.index);
            let ns = host.namespace.as_str();
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Removes every host and the bridge; what is already gone is skipped.
    pub fn destroy(&self, hosts: &[Host]) {
        for host in hosts {
            // Deleting the namespace deletes its end of the veth pair, and
            // with it the other end.
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Cuts the link between two hosts, both ways.
pub fn cut(a: &Host, b: &Host) -> anyhow::Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        let route = format!("{}/32", to.address);
        // Already cut is fine.
        if ip(&["-n", &from.namespace, "route", "add", "blackhole", &route]).is_err() {
            ip(&[
                "-n",
                &from.namespace,
                "route",
                "replace",
                "blackhole",
                &route,
            ])?;
        }
    }
    Ok(())
}

/// Removes every cut from `host`.
pub fn heal(host: &Host) -> anyhow::Result<()> {
    let listed = Command::new("ip")
        .args(["-n", &host.namespace, "route", "show", "type", "blackhole"])
        .output()
        .context("cannot run ip")?;
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        if let Some(destination) = line.split_whitespace().nth(1) {
            ip(&[
                "-n",
                &host.namespace,
                "route",
                "del",
                "blackhole",
                destination,
            ])?;
        }
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
