//! rtnetlink connections: in the agent's own network namespace, or in a
//! pod's (a netlink socket acts in the namespace it was made in, so a
//! thread that entered the pod's namespace makes it and ends).

use std::path::Path;

use futures_util::TryStreamExt as _;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use super::NetError;

/// A netlink handle in the calling thread's network namespace.
pub fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::NetlinkSocket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink handle acting in the network namespace bound at `netns`.
pub fn connect_in(netns: &Path) -> Result<Handle, NetError> {
    let runtime = tokio::runtime::Handle::current();
    let path = netns.to_path_buf();
    let made = std::thread::spawn(move || {
        let _entered = runtime.enter();
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let (connection, handle, _) = rtnetlink::new_connection()?;
        runtime.spawn(connection);
        Ok::<_, std::io::Error>(handle)
    })
    .join();
    match made {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(source)) => Err(NetError::Io {
            path: netns.to_path_buf(),
            source,
        }),
        Err(_) => Err(NetError::Io {
            path: netns.to_path_buf(),
            source: std::io::Error::other("the thread entering the namespace panicked"),
        }),
    }
}

/// One interface: its index and MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub mac: [u8; 6],
}

/// The interface called `name`, if there is one.
pub async fn interface(handle: &Handle, name: &str) -> Result<Option<Interface>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(Interface {
            index: link.header.index,
            mac: mac_of(&link),
        })),
        Ok(None) => Ok(None),
        Err(error) if is_gone(&error) => Ok(None),
        Err(source) => Err(failed(format!("looking up interface {name}"), source)),
    }
}

fn mac_of(link: &LinkMessage) -> [u8; 6] {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether a netlink error says the object is already gone (or never was).
pub fn is_gone(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if [nix::libc::ENODEV, nix::libc::ESRCH, nix::libc::ENOENT]
            .contains(&-message.raw_code()))
}

pub fn failed(what: impl Into<String>, source: rtnetlink::Error) -> NetError {
    NetError::Netlink {
        what: what.into(),
        source,
    }
}

/// Writes an IPv4 sysctl of interface `name` in the calling thread's
/// network namespace (`/proc/sys/net` is the opener's namespace).
pub fn set_interface_sysctl(name: &str, key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net/ipv4/conf").join(name).join(key);
    std::fs::write(&path, value).map_err(|source| NetError::Io { path, source })
}

/// The kernel gives a new network namespace's loopback this index
/// (`LOOPBACK_IFINDEX`), before any other interface can exist.
const LOOPBACK_INDEX: u32 = 1;

/// Sets `lo` up in the calling thread's network namespace, synchronously:
/// the thread that makes a pod sandbox calls it right after unshare, with
/// no runtime to drive an rtnetlink connection (and no `ip` to run).
pub fn loopback_up_here() -> std::io::Result<()> {
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::link::LinkFlags;
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_INDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(std::io::Error::other(format!(
            "netlink: no acknowledgement but {other:?}"
        ))),
    }
}
