//! The dataplane monitor: drop and trace events from the programs' ring
//! buffer (pinned `EVENTS`), decoded and fanned out to whoever watches
//! (`orchctl node monitor` through the API server). Traces are asked of
//! the kernel only while a watcher wants them; drops always come.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, Map, MapData, RingBuf};
use orch_core::api::proto::MonitorEvent;
use orch_ebpf_common::events::{
    DataplaneEvent, EVENT_DROP, EVENTS_MAP, MONITOR_CONFIG_MAP, MonitorConfig, reason_name,
};
use orch_ebpf_common::service::{PROTOCOL_TCP, PROTOCOL_UDP};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use super::{DataplaneError, PinLayout};

/// Events a slow watcher may fall behind by before it misses some.
const BACKLOG: usize = 4096;

pub struct Monitor {
    layout: PinLayout,
    events: broadcast::Sender<MonitorEvent>,
    /// Watchers that want traces; the kernel's switch is written under
    /// this lock, so it always matches the count.
    tracing: Mutex<usize>,
}

/// A watcher; traces stop when the last one that wanted them goes.
pub struct Watch {
    pub events: broadcast::Receiver<MonitorEvent>,
    monitor: Arc<Monitor>,
    traces: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.traces {
            let mut watching = self.monitor.watching();
            *watching -= 1;
            if *watching == 0 {
                self.monitor.set_traces(false);
            }
        }
    }
}

impl Monitor {
    /// Reads the node's pinned event ring buffer from now on (the agent is
    /// its only reader: a ring buffer has one consumer position).
    pub fn start(layout: &PinLayout) -> Result<Arc<Self>, DataplaneError> {
        let path = layout.map(EVENTS_MAP);
        let failed = |source| DataplaneError::Map {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(failed)?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(failed)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, with the
        // same number, for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(
            |source| DataplaneError::Io {
                path: path.clone(),
                source: source.into(),
            },
        )?;
        let (events, _) = broadcast::channel(BACKLOG);
        let monitor = Arc::new(Self {
            layout: layout.clone(),
            events,
            tracing: Mutex::new(0),
        });
        monitor.set_traces(false);
        tokio::spawn(read(ring, monitor.events.clone()));
        Ok(monitor)
    }

    /// Starts watching; with `traces`, the kernel sends traces while this
    /// watch lasts.
    pub fn watch(self: &Arc<Self>, traces: bool) -> Watch {
        let events = self.events.subscribe();
        if traces {
            let mut watching = self.watching();
            *watching += 1;
            if *watching == 1 {
                self.set_traces(true);
            }
        }
        Watch {
            events,
            monitor: self.clone(),
            traces,
        }
    }

    fn watching(&self) -> std::sync::MutexGuard<'_, usize> {
        self.tracing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_traces(&self, on: bool) {
        let path = self.layout.map(MONITOR_CONFIG_MAP);
        let written = MapData::from_pin(&path)
            .and_then(|data| Array::<_, MonitorConfig>::try_from(Map::Array(data)))
            .and_then(|mut config| {
                config.set(
                    0,
                    MonitorConfig {
                        traces: u32::from(on),
                    },
                    0,
                )
            });
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "switching dataplane traces");
        }
    }
}

async fn read(mut ring: AsyncFd<RingBuf<MapData>>, events: broadcast::Sender<MonitorEvent>) {
    let clock = Clock::now();
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(error) => {
                tracing::error!(%error, "reading dataplane events");
                return;
            }
        };
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DataplaneEvent>() {
                continue;
            }
            // SAFETY: the programs write whole DataplaneEvents (repr(C),
            // every bit pattern valid); read_unaligned copes with the ring
            // buffer's 8-byte alignment.
            let event: DataplaneEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DataplaneEvent>()) };
            // No watcher: nobody to tell.
            let _ = events.send(decode(&event, &clock));
        }
        ready.clear_ready();
    }
}

/// Monotonic nanoseconds (the programs' clock) to wall-clock time.
struct Clock {
    /// Wall clock minus monotonic clock, in nanoseconds.
    offset: i128,
}

impl Clock {
    fn now() -> Self {
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0);
        let wall = orch_core::time::now().as_nanosecond();
        Self {
            offset: wall - monotonic,
        }
    }

    fn wall(&self, monotonic_ns: u64) -> String {
        let nanos = self.offset + i128::from(monotonic_ns);
        k8s_openapi::jiff::Timestamp::from_nanosecond(nanos)
            .map(|t| format!("{t:.9}"))
            .unwrap_or_default()
    }
}

fn address(raw: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(raw)),
        u16::from_be(port)
    )
}

/// An event as the API shows it.
fn decode(event: &DataplaneEvent, clock: &Clock) -> MonitorEvent {
    let protocol = match event.protocol {
        0 => String::new(),
        PROTOCOL_TCP => "TCP".into(),
        PROTOCOL_UDP => "UDP".into(),
        other => other.to_string(),
    };
    MonitorEvent {
        time: clock.wall(event.timestamp),
        kind: if event.kind == EVENT_DROP {
            "drop"
        } else {
            "trace"
        }
        .into(),
        reason: reason_name(event.kind, event.reason).into(),
        protocol,
        source: address(event.src_address, event.src_port),
        destination: address(event.dst_address, event.dst_port),
        translated_to: if event.to_address == 0 {
            String::new()
        } else {
            address(event.to_address, event.to_port)
        },
        interface: match event.ifindex {
            0 => String::new(),
            index => super::iface_counters::interface_name(index)
                .unwrap_or_else(|| format!("ifindex {index}")),
        },
    }
}

/// Whether `event` concerns one of `addresses` (none: every event does).
pub fn concerns(event: &MonitorEvent, addresses: &[String]) -> bool {
    if addresses.is_empty() {
        return true;
    }
    let host = |endpoint: &str| endpoint.rsplit_once(':').map_or("", |(h, _)| h).to_string();
    [&event.source, &event.destination, &event.translated_to]
        .iter()
        .any(|endpoint| addresses.contains(&host(endpoint)))
}
