//! Source addresses: `--source 127.0.0.2-127.0.0.50`, a CIDR block (`127.0.0.0/24`), one address,
//! or a comma-separated mix. Connections take addresses round robin and bind to them before
//! connecting (with IP_BIND_ADDRESS_NO_PORT), so the 64K ports of one address stop being the limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses one `--source` may name (a /16): far more than any run needs.
pub const MAX_SOURCES: usize = 65_536;

/// Why a `--source` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("bad source address {0:?}")]
    Address(String),
    #[error("source range {0:?} runs backwards or mixes IPv4 and IPv6")]
    Range(String),
    #[error("source list {0:?} names more than {MAX_SOURCES} addresses")]
    TooMany(String),
}

/// An ordered list of local addresses to bind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    addrs: Vec<IpAddr>,
}

fn parse_ip(s: &str) -> Result<IpAddr, SourceError> {
    s.trim()
        .parse()
        .map_err(|_| SourceError::Address(s.to_string()))
}

impl Sources {
    /// Parse a `--source` value.
    pub fn parse(spec: &str) -> Result<Sources, SourceError> {
        let mut addrs = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (parse_ip(a)?, parse_ip(b)?);
                match (a, b) {
                    (IpAddr::V4(a), IpAddr::V4(b)) if u32::from(a) <= u32::from(b) => {
                        let n = (u32::from(b) - u32::from(a)) as usize + 1;
                        if addrs.len() + n > MAX_SOURCES {
                            return Err(SourceError::TooMany(spec.to_string()));
                        }
                        addrs.extend((u32::from(a)..=u32::from(b)).map(|x| IpAddr::V4(x.into())));
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) if u128::from(a) <= u128::from(b) => {
                        let n = u128::from(b) - u128::from(a) + 1;
                        if addrs.len() as u128 + n > MAX_SOURCES as u128 {
                            return Err(SourceError::TooMany(spec.to_string()));
                        }
                        addrs.extend(
                            (u128::from(a)..=u128::from(b)).map(|x| IpAddr::V6(Ipv6Addr::from(x))),
                        );
                    }
                    _ => return Err(SourceError::Range(part.to_string())),
                }
            } else if let Some((a, bits)) = part.split_once('/') {
                let a = parse_ip(a)?;
                let bits: u32 = bits
                    .parse()
                    .map_err(|_| SourceError::Address(part.to_string()))?;
                let IpAddr::V4(a) = a else {
                    return Err(SourceError::Address(part.to_string()));
                };
                if !(16..=32).contains(&bits) {
                    return Err(SourceError::TooMany(part.to_string()));
                }
                let mask = if bits == 32 {
                    u32::MAX
                } else {
                    !(u32::MAX >> bits)
                };
                let net = u32::from(a) & mask;
                let size = 1u32 << (32 - bits);
                // Skip the network and broadcast addresses of blocks larger than /31.
                let (lo, hi) = if size > 2 {
                    (net + 1, net + size - 2)
                } else {
                    (net, net + size - 1)
                };
                if addrs.len() + (hi - lo) as usize + 1 > MAX_SOURCES {
                    return Err(SourceError::TooMany(spec.to_string()));
                }
                addrs.extend((lo..=hi).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            } else {
                addrs.push(parse_ip(part)?);
            }
        }
        if addrs.is_empty() {
            return Err(SourceError::Address(spec.to_string()));
        }
        Ok(Sources { addrs })
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// How many addresses.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no address is configured (connect from the kernel's choice).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The `index`-th of `count` disjoint shares (for `--processes`); every share gets at least
    /// one address, so with fewer addresses than shares some shares overlap.
    pub fn share(&self, index: usize, count: usize) -> Sources {
        if self.addrs.is_empty() || count <= 1 {
            return self.clone();
        }
        let mut addrs: Vec<IpAddr> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % count == index % count)
            .map(|(_, a)| *a)
            .collect();
        if addrs.is_empty() {
            addrs.push(self.addrs[index % self.addrs.len()]);
        }
        Sources { addrs }
    }

    /// A compact text form: `first..last (N addresses)`.
    pub fn describe(&self) -> String {
        match self.addrs.as_slice() {
            [] => "kernel default".to_string(),
            [one] => one.to_string(),
            [first, .., last] => format!("{first}..{last} ({} addresses)", self.addrs.len()),
        }
    }
}

/// Round-robin picker over a [`Sources`] list, one per worker (offset so workers interleave).
#[derive(Clone, Debug)]
pub struct SourcePicker {
    addrs: std::sync::Arc<[IpAddr]>,
    next: usize,
}

impl SourcePicker {
    /// A picker starting at `offset`.
    pub fn new(sources: &Sources, offset: usize) -> SourcePicker {
        SourcePicker {
            addrs: sources.addrs.clone().into(),
            next: offset,
        }
    }

    /// The next address to bind, or `None` to let the kernel choose.
    pub fn next_addr(&mut self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let a = self.addrs[self.next % self.addrs.len()];
        self.next = self.next.wrapping_add(1);
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cidr_and_lists() {
        let s = Sources::parse("127.0.0.2-127.0.0.5").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.addrs()[3], "127.0.0.5".parse::<IpAddr>().unwrap());
        let s = Sources::parse("127.0.0.0/30").unwrap();
        assert_eq!(s.describe(), "127.0.0.1..127.0.0.2 (2 addresses)");
        let s = Sources::parse("127.0.0.1, 127.0.0.9 ,::1").unwrap();
        assert_eq!(s.len(), 3);
        assert!(Sources::parse("127.0.0.5-127.0.0.2").is_err());
        assert!(Sources::parse("127.0.0.1-::1").is_err());
        assert!(Sources::parse("nope").is_err());
        assert!(Sources::parse("10.0.0.0/8").is_err());
        assert!(Sources::parse("").is_err());
    }

    #[test]
    fn shares_are_disjoint_and_cover() {
        let s = Sources::parse("127.0.0.1-127.0.0.10").unwrap();
        let a = s.share(0, 2);
        let b = s.share(1, 2);
        assert_eq!(a.len() + b.len(), 10);
        assert!(a.addrs().iter().all(|x| !b.addrs().contains(x)));
        let one = Sources::parse("127.0.0.1").unwrap();
        assert_eq!(one.share(1, 2).len(), 1);
    }

    #[test]
    fn picker_round_robin() {
        let s = Sources::parse("127.0.0.1-127.0.0.3").unwrap();
        let mut p = SourcePicker::new(&s, 1);
        let got: Vec<_> = (0..4).map(|_| p.next_addr().unwrap().to_string()).collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2"]);
        assert_eq!(SourcePicker::new(&Sources::default(), 0).next_addr(), None);
    }
}
