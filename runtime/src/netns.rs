//! Listening sockets inside a sandbox's network namespace.
//!
//! A sandbox's network namespace has nothing but loopback. To give it an
//! egress proxy, a short-lived thread enters that namespace (`setns`),
//! brings `lo` up, binds `127.0.0.1:PORT` and exits; the socket stays in
//! the namespace it was made in, and the worker serves it from the host
//! side. Nothing else of the worker ever enters the namespace.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use libcontainer::network::link::LinkClient;
use libcontainer::network::wrapper::create_network_client;
use nix::sched::{CloneFlags, setns};

use crate::Error;

/// Binds `127.0.0.1:port` inside the network namespace of process `pid`.
pub fn bind_loopback(pid: i32, port: u16) -> Result<TcpListener, Error> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::Sandbox(format!("cannot open the sandbox's network namespace: {e}")))?;
    let thread = std::thread::Builder::new()
        .name("netns-bind".into())
        .spawn(move || -> Result<TcpListener, Error> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Sandbox(format!("cannot enter the sandbox's network namespace: {e}"))
            })?;
            let mut links = LinkClient::new(create_network_client())
                .map_err(|e| Error::Sandbox(format!("netlink: {e}")))?;
            let lo = links
                .get_by_name("lo")
                .map_err(|e| Error::Sandbox(format!("no loopback in the sandbox: {e}")))?;
            links.set_up(lo.header.index).map_err(|e| {
                Error::Sandbox(format!("cannot bring the sandbox's loopback up: {e}"))
            })?;
            let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .map_err(|e| Error::Sandbox(format!("cannot bind the egress proxy: {e}")))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Error::Sandbox(format!("egress proxy socket: {e}")))?;
            Ok(listener)
        })
        .map_err(|e| Error::Sandbox(format!("cannot start a thread: {e}")))?;
    thread
        .join()
        .map_err(|_| Error::Sandbox("the network namespace thread panicked".into()))?
}
