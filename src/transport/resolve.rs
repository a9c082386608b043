//! Host name resolution that keeps the resolver's own error code.
//!
//! `tokio::net::lookup_host` (std's `ToSocketAddrs`) turns every getaddrinfo failure into
//! one `io::Error` of an uncategorised kind with the code only in its message, so "this
//! name does not exist" (a typo: stop) cannot be told from "the resolver is unreachable"
//! (may heal: retry) without matching text. This calls `getaddrinfo(3)` itself, on a
//! blocking thread as std does, and maps the code.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Why a name did not resolve.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// The resolver answered that the name does not exist, or has no address
    /// (EAI_NONAME, EAI_NODATA).
    NotFound,
    /// Anything else: the resolver is unreachable or timed out (EAI_AGAIN), failed
    /// (EAI_FAIL), a local error. `String` is the resolver's own description.
    Failed(String),
}

/// Resolves `host` to the addresses of its stream sockets, `port` set on each.
pub(crate) async fn resolve_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || getaddrinfo(&host, port))
        .await
        .map_err(|err| ResolveError::Failed(format!("the resolver task failed: {err}")))?
}

fn getaddrinfo(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    // A URL host never holds a NUL; refusing one here keeps the C call well-defined.
    let c_host = CString::new(host)
        .map_err(|_| ResolveError::Failed("the host name contains a NUL byte".into()))?;
    // SAFETY: `addrinfo` is a plain C struct for which all-zero is the documented
    // "no hints" value; only the fields set below are read by getaddrinfo.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `c_host` is a valid NUL-terminated string and `hints` a valid struct, both
    // alive for the call; a null service is allowed; `list` receives a list we own.
    let code = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if code != 0 {
        return Err(error_from_code(code));
    }
    let list = AddrInfoList(list);
    let mut addrs = Vec::new();
    let mut cursor = list.0;
    while !cursor.is_null() {
        // SAFETY: `cursor` points into the list getaddrinfo returned, freed only when
        // `list` is dropped after this loop.
        let info = unsafe { &*cursor };
        if let Some(addr) = socket_addr(info, port) {
            addrs.push(addr);
        }
        cursor = info.ai_next;
    }
    Ok(addrs)
}

/// The list getaddrinfo allocated, freed once.
struct AddrInfoList(*mut libc::addrinfo);

impl Drop for AddrInfoList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a successful getaddrinfo and is freed only here.
            unsafe { libc::freeaddrinfo(self.0) }
        }
    }
}

/// The address of one entry, IPv4 or IPv6; other families are skipped.
fn socket_addr(info: &libc::addrinfo, port: u16) -> Option<SocketAddr> {
    let len = info.ai_addrlen as usize;
    if info.ai_addr.is_null() {
        return None;
    }
    match info.ai_family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say `ai_addr` holds a `sockaddr_in`;
            // `read_unaligned` makes no assumption about its alignment.
            let sin = unsafe { std::ptr::read_unaligned(info.ai_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 =
                unsafe { std::ptr::read_unaligned(info.ai_addr as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// EAI_NONAME and EAI_NODATA are the resolver's "this name does not exist"; every other
/// code (EAI_AGAIN: no answer in time, EAI_FAIL, EAI_MEMORY, EAI_SYSTEM, …) says nothing
/// about the name.
fn error_from_code(code: libc::c_int) -> ResolveError {
    if is_not_found(code) {
        return ResolveError::NotFound;
    }
    if code == libc::EAI_SYSTEM {
        return ResolveError::Failed(io::Error::last_os_error().to_string());
    }
    // SAFETY: gai_strerror returns a pointer to a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(libc::gai_strerror(code)) };
    ResolveError::Failed(text.to_string_lossy().into_owned())
}

fn is_not_found(code: libc::c_int) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    if code == libc::EAI_NODATA {
        return true;
    }
    code == libc::EAI_NONAME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_codes_split_not_found_from_failures() {
        assert!(matches!(
            error_from_code(libc::EAI_NONAME),
            ResolveError::NotFound
        ));
        #[cfg(target_os = "linux")]
        assert!(matches!(
            error_from_code(libc::EAI_NODATA),
            ResolveError::NotFound
        ));
        for code in [libc::EAI_AGAIN, libc::EAI_FAIL, libc::EAI_MEMORY] {
            assert!(
                matches!(error_from_code(code), ResolveError::Failed(ref text) if !text.is_empty()),
                "{code}"
            );
        }
    }

    #[test]
    fn numeric_and_localhost_names_resolve_with_the_port() {
        let addrs = getaddrinfo("127.0.0.1", 8080).unwrap();
        assert_eq!(addrs, ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
        let addrs = getaddrinfo("::1", 9).unwrap();
        assert_eq!(addrs, ["[::1]:9".parse::<SocketAddr>().unwrap()]);
        let addrs = getaddrinfo("localhost", 443).unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.port() == 443 && a.ip().is_loopback()));
    }
}
