//! Hosts of their own: with `up --netns PREFIX`, every keeper and replica
//! runs in a network namespace `PREFIX-NAME` with one address on a private
//! /24, joined by a bridge `PREFIXbr` that also carries this host's
//! address `.1` (from which clients and the health checks reach them).
//! Links between two processes are cut with blackhole routes inside both
//! namespaces (packets vanish, as in a real partition) and healed by
//! removing them. A host's link can also be impaired: random packet loss
//! (iptables' `statistic` match, both ways) and a bandwidth cap (a `tbf`
//! queue, so packets wait behind each other; this kernel has no `netem`
//! for a fixed per-packet delay). Everything here is created by `up` and
//! removed by `down`; nothing else on the machine is touched. Needs root
//! (or CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2, and iptables for loss.

use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Host addresses start at `.10` of the /24 (`.1` is this host's).
const FIRST_HOST_OCTET: u8 = 10;

/// A namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The caller's `--netns` prefix cannot name namespaces and interfaces.
    #[error("--netns must be 1 to 8 lowercase letters or digits")]
    Prefix,
    /// The caller's `--netns-subnet` is not three octets.
    #[error("--netns-subnet must be three octets such as 10.213.7")]
    Subnet,
    /// More processes than host addresses in the /24.
    #[error("a /24 holds at most {} hosts", u8::MAX - FIRST_HOST_OCTET + 1)]
    TooManyHosts,
    /// The cluster was started without `--netns`.
    #[error("this cluster has no network namespaces (up --netns)")]
    NoNamespaces,
    /// The process runs on this host's network (the Workload API).
    #[error("{0} has no namespace of its own")]
    NoNamespace(String),
    /// `impair` was asked for nothing.
    #[error("impair needs --loss, --rate or both")]
    NoImpairment,
    /// A loss outside 1 to 100 percent.
    #[error("loss must be 1 to 100 percent")]
    Loss,
    /// A bandwidth cap below what `tbf` can pace.
    #[error("the bandwidth cap must be at least 8 kbit/s")]
    Rate,
    /// A tool is not installed or cannot run.
    #[error("cannot run {tool} (iproute2): {source}")]
    Missing {
        /// `ip` or `tc`.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A tool refused (no privileges, a name in use).
    #[error("{tool} {args} failed: {complaint}")]
    Tool {
        /// `ip` or `tc`.
        tool: &'static str,
        /// Its arguments.
        args: String,
        /// What it said on stderr.
        complaint: String,
    },
    /// iptables, which packet loss needs, failed (or is not installed).
    #[error("iptables (apt-get install iptables) is needed for packet loss: {0}")]
    Iptables(Box<NetnsError>),
}

/// The namespaces' layout, as `cluster.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Prefix of namespace and interface names (at most 8 characters).
    pub prefix: String,
    /// First three octets of the /24, e.g. `10.213.7`.
    pub subnet: Subnet,
}

/// The first three octets of a /24, written `10.213.7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet([u8; 3]);

impl Subnet {
    /// Its address ending in `last`.
    pub fn address(self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.0;
        Ipv4Addr::new(a, b, c, last)
    }
}

impl FromStr for Subnet {
    type Err = NetnsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let octets: Vec<u8> = text
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| NetnsError::Subnet)?;
        Ok(Self(octets.try_into().map_err(|_| NetnsError::Subnet)?))
    }
}

impl TryFrom<String> for Subnet {
    type Error = NetnsError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> Self {
        subnet.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(formatter, "{a}.{b}.{c}")
    }
}

/// One host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub namespace: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    /// Short index for interface names.
    pub index: usize,
}

impl Layout {
    /// Checks the prefix and subnet before anything is created.
    pub fn new(prefix: &str, subnet: &str) -> Result<Self, NetnsError> {
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(NetnsError::Prefix);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            subnet: subnet.parse()?,
        })
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The address this host has on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.address(1)
    }

    /// The host for process `name`, the `index`-th (from 0) with a
    /// namespace.
    pub fn host(&self, name: &str, index: usize) -> Result<Host, NetnsError> {
        let last = u8::try_from(index)
            .ok()
            .and_then(|index| index.checked_add(FIRST_HOST_OCTET))
            .ok_or(NetnsError::TooManyHosts)?;
        Ok(Host {
            namespace: format!("{}-{name}", self.prefix),
            address: self.subnet.address(last),
            index,
        })
    }

    /// Creates the bridge and every host (after removing leftovers of an
    /// earlier run with the same prefix).
    pub fn create(&self, hosts: &[Host]) -> Result<(), NetnsError> {
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
pub fn cut(a: &Host, b: &Host) -> Result<(), NetnsError> {
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

/// How a host's link is impaired.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Share of packets dropped, each way, in percent (1 to 100).
    pub loss_percent: Option<u8>,
    /// Bandwidth cap in kbit/s (at least 8).
    pub rate_kbit: Option<u32>,
}

/// Impairs `host`'s link to every other host (replacing an earlier
/// impairment of the same kind).
pub fn impair(host: &Host, impairment: Impairment) -> Result<(), NetnsError> {
    if let Some(percent) = impairment.loss_percent {
        if !(1..=100).contains(&percent) {
            return Err(NetnsError::Loss);
        }
        clear_loss(host)?;
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            iptables(
                host,
                &[
                    "-A",
                    chain,
                    direction,
                    "eth0",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ],
            )?;
        }
    }
    if let Some(rate) = impairment.rate_kbit {
        if rate < 8 {
            return Err(NetnsError::Rate);
        }
        // A queue of up to a second behind the cap: bursts wait, as on a
        // congested link, rather than vanish.
        ip_tool(
            "tc",
            &[
                "-n",
                &host.namespace,
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &format!("{rate}kbit"),
                "burst",
                "16kb",
                "latency",
                "1s",
            ],
        )?;
    }
    Ok(())
}

/// Removes packet loss rules from `host` (none is fine).
fn clear_loss(host: &Host) -> Result<(), NetnsError> {
    // The namespace is ours alone: every rule in it is a loss rule.
    if has_rules(host) {
        iptables(host, &["-F"])?;
    }
    Ok(())
}

/// Whether `host` has iptables rules (false without iptables).
fn has_rules(host: &Host) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &host.namespace, "iptables", "-w", "-S"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("-A "))
}

fn iptables(host: &Host, args: &[&str]) -> Result<(), NetnsError> {
    let mut full = vec!["netns", "exec", &host.namespace, "iptables", "-w"];
    full.extend_from_slice(args);
    ip(&full).map_err(|error| NetnsError::Iptables(Box::new(error)))
}

/// Removes every cut and impairment from `host`.
pub fn heal(host: &Host) -> Result<(), NetnsError> {
    clear_loss(host)?;
    let queues = Command::new("tc")
        .args([
            "-n",
            &host.namespace,
            "qdisc",
            "show",
            "dev",
            "eth0",
            "root",
        ])
        .output()
        .map_err(|source| NetnsError::Missing { tool: "tc", source })?;
    if String::from_utf8_lossy(&queues.stdout).contains("tbf") {
        ip_tool(
            "tc",
            &["-n", &host.namespace, "qdisc", "del", "dev", "eth0", "root"],
        )?;
    }
    let listed = Command::new("ip")
        .args(["-n", &host.namespace, "route", "show", "type", "blackhole"])
        .output()
        .map_err(|source| NetnsError::Missing { tool: "ip", source })?;
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

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    ip_tool("ip", args)
}

/// Runs an iproute2 tool (`ip`, `tc`), failing with its complaint.
fn ip_tool(tool: &'static str, args: &[&str]) -> Result<(), NetnsError> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Missing { tool, source })?;
    if !output.status.success() {
        return Err(NetnsError::Tool {
            tool,
            args: args.join(" "),
            complaint: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
